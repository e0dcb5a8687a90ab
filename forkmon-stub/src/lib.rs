//! The `LD_PRELOAD` library that lives inside the target and forks it at a
//! checkpoint. `forkmon trace` does not need it; `forkmon run` will load it
//! (see DESIGN.md, "The mechanism").
