//! A statically linked program cannot load forkmon's stub: `LD_PRELOAD`
//! is the dynamic loader's, and such a program has none. It runs,
//! observed but never checkpointed; forkmon says so at start rather than
//! leave the user waiting for a checkpoint that cannot come.
use std::{
    ffi::OsStr,
    fs::File,
    io::Read as _,
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Path, PathBuf},
};

/// The program's file, if it is an ELF executable without an interpreter
/// (`PT_INTERP`): statically linked, static-pie included. Looked up in
/// `PATH` as `execvp` does, read with the program user's permissions.
/// Anything else (a script, a dynamic executable, a file that cannot be
/// read) is `None`.
pub fn statically_linked(program: &OsStr) -> Option<PathBuf> {
    let _user = crate::credentials::as_program_user();
    let path = find_in_path(program)?;
    let mut file = File::open(&path).ok()?;
    let mut bytes = Vec::new();
    // The ELF header and its program headers are in the first pages.
    file.by_ref().take(64 * 1024).read_to_end(&mut bytes).ok()?;
    (is_elf64(&bytes) && !has_interpreter(&bytes)?).then_some(path)
}

fn find_in_path(program: &OsStr) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn is_elf64(bytes: &[u8]) -> bool {
    // Magic, 64-bit class, little-endian.
    bytes.len() >= 64 && bytes[..4] == *b"\x7fELF" && bytes[4] == 2 && bytes[5] == 1
}

const PT_INTERP: u32 = 3;

/// Whether a program header names an interpreter; `None` if the headers
/// lie beyond what was read.
fn has_interpreter(bytes: &[u8]) -> Option<bool> {
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let offset = usize::try_from(u64::from_le_bytes(bytes[32..40].try_into().ok()?)).ok()?;
    let (size, count) = (u16_at(54), u16_at(56));
    if size < 4 {
        return None;
    }
    let mut interpreter = false;
    for index in 0..count {
        let at = offset.checked_add(index.checked_mul(size)?)?;
        let header = bytes.get(at..at + 4)?;
        interpreter |= u32::from_le_bytes(header.try_into().ok()?) == PT_INTERP;
    }
    Some(interpreter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_and_a_script_are_not_static() {
        assert_eq!(statically_linked(OsStr::new("sh")), None);
        assert_eq!(statically_linked(OsStr::new("/etc/passwd")), None);
        assert_eq!(statically_linked(OsStr::new("no-such-program-here")), None);
    }

    #[test]
    fn headers_without_an_interpreter_are_static() {
        // An ELF header whose two program headers (at 64, 56 bytes each)
        // are PT_LOAD (1) and then PT_INTERP (3) or PT_NOTE (4).
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[32] = 64;
        elf[54] = 56;
        elf[56] = 2;
        elf[64] = 1;
        elf[64 + 56] = 3;
        assert!(is_elf64(&elf));
        assert_eq!(has_interpreter(&elf), Some(true));
        elf[64 + 56] = 4;
        assert_eq!(has_interpreter(&elf), Some(false));
        // Headers beyond the bytes read: unknown.
        elf[56] = 9;
        assert_eq!(has_interpreter(&elf), None);
    }
}
