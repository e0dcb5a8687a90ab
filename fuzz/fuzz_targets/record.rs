//! The ring-buffer record decoder on any bytes, at any alignment: no panic,
//! and (under the address sanitizer) no read outside them.
#![no_main]

use forkmon_common::{Record, comm_str};
use libfuzzer_sys::fuzz_target;

/// Reads every byte a caller may read through the record.
fn touch(record: Record) -> u64 {
    match record {
        Record::Open(open) => {
            let path = open.path_bytes().iter().map(|&b| u64::from(b)).sum::<u64>();
            let comm = comm_str(&open.comm).len() as u64;
            let fields = [
                u64::from(open.kind),
                u64::from(open.syscall),
                open.ts_ns,
                u64::from(open.tgid),
                u64::from(open.tid),
                open.ret as u64,
                open.flags,
                open.mode,
                open.dirfd as u64,
                u64::from(open.path_len),
                u64::from(open.path_state),
                u64::from(open.signalled),
            ];
            assert!(open.path_bytes().len() <= open.path.len());
            path.wrapping_add(comm)
                .wrapping_add(fields.iter().fold(0, |a, &f| a.wrapping_add(f)))
        }
        Record::Process(process) => {
            u64::from(process.pid) ^ process.ts_ns ^ comm_str(&process.comm).len() as u64
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // An 8-aligned copy, then each misalignment: open records are only
    // borrowed where aligned.
    let mut aligned = vec![0u64; data.len().div_ceil(8) + 1];
    // SAFETY: the u64 buffer holds at least data.len() + 8 bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(aligned.as_mut_ptr().cast::<u8>(), aligned.len() * 8)
    };
    for offset in 0..8 {
        bytes[offset..offset + data.len()].copy_from_slice(data);
        if let Some(record) = Record::decode(&bytes[offset..offset + data.len()]) {
            std::hint::black_box(touch(record));
        }
    }
});
