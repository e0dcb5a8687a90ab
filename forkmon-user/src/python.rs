//! Python's bytecode caches stand for their sources.
//!
//! Once a module's cache exists, Python opens `D/__pycache__/N.TAG.pyc`,
//! not `D/N.py` (PEP 3147; `N.TAG.opt-K.pyc` when optimizing, PEP 488).
//! Editing `N.py` never changes that file, so a checkpoint at the cache is
//! a checkpoint at the source: the filter is matched against the source,
//! the source is watched and named, and a resumed child is made to fail
//! its re-open of the cache (see `forkmon_common::stub::CHECKPOINT_SOURCE`)
//! so that importlib falls back to the new source. forkmon never writes or
//! removes a cache; Python rewrites it as it does after any edit.
use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

/// The source `pyc` is the bytecode cache of, if it is one: by name only;
/// the caller checks that the source exists. `prefix` is
/// `PYTHONPYCACHEPREFIX`, under which caches mirror their sources'
/// absolute directories without `__pycache__`.
pub fn source_of_cache(pyc: &Path, prefix: Option<&Path>) -> Option<PathBuf> {
    let name = pyc.file_name()?.as_bytes();
    let stem = name.strip_suffix(b".pyc")?;
    let dir = pyc.parent()?;
    // `N.TAG[.opt-K]` (pytest's rewritten modules: `N.TAG-pytest-X.Y.Z`):
    // the module name ends at the first dot. Legacy caches are `N.pyc`.
    let (module, tagged) = match stem.iter().position(|&b| b == b'.') {
        Some(dot) => (&stem[..dot], true),
        None => (stem, false),
    };
    if module.is_empty() {
        return None;
    }
    let mut source_name = module.to_vec();
    source_name.extend_from_slice(b".py");
    let source_name = OsStr::from_bytes(&source_name);
    if !tagged {
        return Some(dir.join(source_name));
    }
    if dir.file_name() == Some(OsStr::new("__pycache__")) {
        return Some(dir.parent()?.join(source_name));
    }
    let mirrored = dir.strip_prefix(prefix?).ok()?;
    Some(Path::new("/").join(mirrored).join(source_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(pyc: &str) -> Option<PathBuf> {
        source_of_cache(Path::new(pyc), Some(Path::new("/tmp/pycache")))
    }

    #[test]
    fn caches_map_to_their_sources() {
        for (pyc, py) in [
            ("/p/__pycache__/mod.cpython-311.pyc", "/p/mod.py"),
            ("/p/__pycache__/mod.cpython-311.opt-1.pyc", "/p/mod.py"),
            ("/p/__pycache__/mod.cpython-311.opt-2.pyc", "/p/mod.py"),
            (
                "/p/tests/__pycache__/test_x.cpython-311-pytest-8.3.4.pyc",
                "/p/tests/test_x.py",
            ),
            ("/p/__pycache__/__init__.cpython-311.pyc", "/p/__init__.py"),
            // Legacy, beside the source.
            ("/p/mod.pyc", "/p/mod.py"),
            // PYTHONPYCACHEPREFIX mirrors the source's directory.
            (
                "/tmp/pycache/home/me/p/mod.cpython-311.pyc",
                "/home/me/p/mod.py",
            ),
        ] {
            assert_eq!(source(pyc), Some(PathBuf::from(py)), "{pyc}");
        }
    }

    #[test]
    fn other_files_are_no_caches() {
        for path in [
            "/p/mod.py",
            "/p/data.pyc.txt",
            "/p/__pycache__/.cpython-311.pyc",
            "/elsewhere/mod.cpython-311.pyc",
        ] {
            assert_eq!(source(path), None, "{path}");
        }
        assert_eq!(
            source_of_cache(Path::new("/p/x/mod.cpython-311.pyc"), None),
            None,
            "a tagged cache outside __pycache__ without a prefix"
        );
    }
}
