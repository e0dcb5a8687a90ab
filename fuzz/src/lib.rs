//! forkmon's code under fuzzing, compiled from its sources. forkmon-user is
//! a binary whose build script builds the eBPF object and the stub (nightly,
//! bpf-linker, minutes), none of which its filter needs: the module is
//! included here by path instead of through a library target there.
#[path = "../../forkmon-user/src/filter/mod.rs"]
pub mod filter;
