//! The project's ignore files: what `.gitignore` and `.ignore` leave out
//! (build output, generated files, caches) is no work of the user's, so it
//! is never a checkpoint nor watched unless an absolute glob or a Lua
//! pattern names it.
//!
//! The project is the nearest directory holding `.git`, from forkmon's
//! directory up; without one, forkmon's directory. As git does, each
//! directory's ignore files rule over the files below it, a deeper one over
//! a shallower one, and a `!pattern` takes a file back; `.git/info/exclude`
//! counts as the project's own. Files outside the project are not judged.
use std::{
    cell::RefCell,
    collections::HashMap,
    path::{Path, PathBuf},
};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// The ignore files of one project, read as they are first needed.
#[derive(Debug, Clone)]
pub struct IgnoreFiles {
    root: PathBuf,
    /// Each directory's rules (`None`: it has no ignore file).
    by_dir: RefCell<HashMap<PathBuf, Option<Gitignore>>>,
}

/// The ignore files a directory may hold, the later winning.
const FILES: [&str; 2] = [".gitignore", ".ignore"];

impl IgnoreFiles {
    /// The ignore files of the project `base` (absolute) is in.
    pub fn of(base: &Path) -> IgnoreFiles {
        let root = base
            .ancestors()
            .find(|dir| dir.join(".git").exists())
            .unwrap_or(base)
            .to_path_buf();
        IgnoreFiles {
            root,
            by_dir: RefCell::new(HashMap::new()),
        }
    }

    /// Whether the file at `abs_path` (absolute, lexically clean) is
    /// ignored by the project's ignore files.
    pub fn ignores(&self, abs_path: &Path) -> bool {
        let Ok(below) = abs_path.strip_prefix(&self.root) else {
            return false;
        };
        // The directories from the project's root down to the file's.
        let mut dirs = vec![self.root.clone()];
        let mut dir = self.root.clone();
        if let Some(parent) = below.parent() {
            for component in parent.components() {
                dir.push(component);
                dirs.push(dir.clone());
            }
        }
        // The deepest rule that says something decides.
        for dir in dirs.iter().rev() {
            let decided = self.with_rules(dir, |rules| {
                let verdict = rules.matched_path_or_any_parents(abs_path, false);
                (!verdict.is_none()).then(|| verdict.is_ignore())
            });
            if let Some(ignored) = decided {
                return ignored;
            }
        }
        false
    }

    /// `judge` applied to `dir`'s rules, if it has any.
    fn with_rules(&self, dir: &Path, judge: impl Fn(&Gitignore) -> Option<bool>) -> Option<bool> {
        let mut by_dir = self.by_dir.borrow_mut();
        let rules = by_dir
            .entry(dir.to_path_buf())
            .or_insert_with(|| self.read_rules(dir));
        rules.as_ref().and_then(judge)
    }

    /// `dir`'s ignore files, with the user's permissions (see
    /// `credentials`); unreadable or broken lines are skipped, as git does.
    fn read_rules(&self, dir: &Path) -> Option<Gitignore> {
        let _as_user = crate::credentials::as_program_user();
        let mut builder = GitignoreBuilder::new(dir);
        let mut any = false;
        let mut add = |file: PathBuf| {
            if file.is_file() {
                // An error names a bad line; the others still count.
                let _ = builder.add(file);
                any = true;
            }
        };
        if dir == self.root {
            add(dir.join(".git/info/exclude"));
        }
        for name in FILES {
            add(dir.join(name));
        }
        if !any {
            return None;
        }
        builder.build().ok().filter(|rules| !rules.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        dir
    }

    #[test]
    fn gitignore_rules_apply_below_their_directory_deepest_first() {
        let dir = project(&[
            (".git/HEAD", ""),
            (".gitignore", "build/\n*.gen.py\n"),
            ("src/.gitignore", "!keep.gen.py\nlocal.py\n"),
            (".ignore", "scratch.py\n"),
        ]);
        let root = dir.path();
        // From a subdirectory: the project is where .git is.
        let ignore = IgnoreFiles::of(&root.join("src"));
        for (path, ignored) in [
            ("app.py", false),
            ("build/out.py", true),
            ("build/deep/out.py", true),
            ("x.gen.py", true),
            ("src/keep.gen.py", false),
            ("src/other.gen.py", true),
            ("src/local.py", true),
            ("local.py", false),
            ("scratch.py", true),
        ] {
            assert_eq!(ignore.ignores(&root.join(path)), ignored, "{path}");
        }
        assert!(
            !ignore.ignores(Path::new("/etc/hosts")),
            "outside the project"
        );
    }

    #[test]
    fn git_info_exclude_counts_and_no_ignore_file_ignores_nothing() {
        let dir = project(&[(".git/info/exclude", "*.log\n")]);
        let ignore = IgnoreFiles::of(dir.path());
        assert!(ignore.ignores(&dir.path().join("a/run.log")));
        assert!(!ignore.ignores(&dir.path().join("a/run.py")));
        let plain = project(&[("a.py", "")]);
        assert!(!IgnoreFiles::of(plain.path()).ignores(&plain.path().join("a.py")));
    }
}
