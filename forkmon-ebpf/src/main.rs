//! forkmon's kernel side: follow one process tree and report every file it
//! opens. Opens are read at syscall exit from the caller's saved registers
//! (`open.rs` says why not opensnoop's stash-at-entry shape); process-tree
//! tracking keeps the set of traced processes in the `TRACKED` map, seeded
//! by user space with the target's pid before it runs.
#![no_std]
#![no_main]

mod maps;
mod open;
mod process;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

// GPL-compatible: bpf_probe_read_user_str and bpf_send_signal_thread are
// GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
