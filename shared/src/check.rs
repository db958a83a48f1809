//! Field checks every decoder (and encoder) applies to names and free text.

use crate::error::DecodeError;

/// A name (agent_id, connector): non-empty, bounded, no control characters.
pub(crate) fn check_name(field: &'static str, s: &str, max: usize) -> Result<(), DecodeError> {
    if s.is_empty() {
        return Err(DecodeError::Empty { field });
    }
    check_text(field, s, max)
}

/// Free text (reason, version, address): bounded, no control characters; may be empty.
pub(crate) fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), DecodeError> {
    if s.len() > max {
        return Err(DecodeError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(DecodeError::ControlChar { field });
    }
    Ok(())
}
