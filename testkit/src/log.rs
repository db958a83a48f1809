//! Logging in test binaries: [`init`] sends logs to the test's output, filtered by `NC_TEST_LOG`
//! (off by default); [`Capture`] keeps everything logged so a test can search it (for secrets
//! that must never appear, for a message that must).
//!
//! Both install the process-wide subscriber, so a test binary uses one or the other: tracing
//! caches per-callsite interest across threads, and thread-local subscribers in tests running in
//! parallel lose events.

use std::sync::{Arc, Mutex, OnceLock};

/// Logs to the test writer at the level in `NC_TEST_LOG` (e.g. `debug`); nothing when unset.
/// Idempotent.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("NC_TEST_LOG").unwrap_or_else(|_| "off".into()),
        ))
        .with_test_writer()
        .try_init();
}

/// How captured lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines, every level (TRACE and up).
    Text,
    /// One JSON object per line (fields under `fields`), DEBUG and up.
    Json,
}

/// Everything logged in this test binary, all levels, all threads.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

impl Capture {
    /// The binary's capture, installed as the global subscriber on first use; later calls must
    /// ask for the same format.
    pub fn global(format: Format) -> &'static Capture {
        static CAPTURE: OnceLock<(Format, Capture)> = OnceLock::new();
        let (installed, c) = CAPTURE.get_or_init(|| {
            let c = Capture::default();
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(c.clone());
            let set = match format {
                Format::Text => tracing::subscriber::set_global_default(
                    builder.with_max_level(tracing::Level::TRACE).finish(),
                ),
                Format::Json => tracing::subscriber::set_global_default(
                    builder
                        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
                        .json()
                        .finish(),
                ),
            };
            set.expect("the capture is the first global subscriber of this binary");
            (format, c)
        });
        assert_eq!(*installed, format, "one capture format per test binary");
        c
    }

    /// Everything captured so far.
    /// Bytes captured so far: what the capture itself holds in this process's memory.
    pub fn len(&self) -> usize {
        self.0.lock().expect("capture").len()
    }

    /// Nothing captured yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture")).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}
