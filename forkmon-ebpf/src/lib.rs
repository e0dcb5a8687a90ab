#![no_std]
// This file exists so forkmon-user can name this package as a
// build-dependency; the programs themselves are the `forkmon` binary target,
// built for bpfel-unknown-none by aya-build.
