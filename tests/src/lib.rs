//! Integration tests live in `tests/`; they run the real `forkmon` binary.
