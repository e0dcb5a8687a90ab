//! Where the cgroup v2 hierarchy is mounted, and where forkmon's own cgroup
//! is in it.
use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use super::CgroupError;

/// Directory of forkmon's own cgroup v2.
pub(super) fn own_cgroup_dir() -> Result<PathBuf, CgroupError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CgroupError::io("cannot read", "/proc/self/mountinfo", e))?;
    let mounts = cgroup2_mounts(&mountinfo);
    if mounts.is_empty() {
        return Err(CgroupError::NoCgroup2);
    }
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| CgroupError::io("cannot read", "/proc/self/cgroup", e))?;
    let own = own_cgroup_path(&own).ok_or(CgroupError::NoCgroup2)?;
    Ok(cgroup_dir(&mounts, &own).unwrap_or_else(|| {
        // Our cgroup is outside every mount (a cgroup namespace mounted
        // oddly): any place in the hierarchy will do.
        log::warn!(
            "cgroup {} is not visible in any cgroup2 mount; using {}",
            own.display(),
            mounts[0].1.display()
        );
        mounts[0].1.clone()
    }))
}

/// `(root, mount point)` of every cgroup2 mount in `/proc/self/mountinfo`.
fn cgroup2_mounts(mountinfo: &str) -> Vec<(PathBuf, PathBuf)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            let (fields, rest) = line.split_once(" - ")?;
            if rest.split(' ').next()? != "cgroup2" {
                return None;
            }
            let mut fields = fields.split(' ');
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            Some((unescape(root), unescape(mount_point)))
        })
        .collect()
}

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')));
        match octal.and_then(|n| u8::try_from(n).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The `0::/path` entry of `/proc/self/cgroup`.
fn own_cgroup_path(proc_cgroup: &str) -> Option<PathBuf> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(PathBuf::from)
}

/// Where cgroup `own` (a path from the hierarchy's root) is, given the
/// `(root, mount point)` of the cgroup2 mounts.
fn cgroup_dir(mounts: &[(PathBuf, PathBuf)], own: &Path) -> Option<PathBuf> {
    mounts.iter().find_map(|(root, mount_point)| {
        let rel = own.strip_prefix(root).ok()?;
        Some(if rel.as_os_str().is_empty() {
            mount_point.clone()
        } else {
            mount_point.join(rel)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let mountinfo = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/memory rw shared:5 - cgroup cgroup rw,memory
43 22 0:38 /sub /mnt/with\\040space rw master:1 - cgroup2 none rw
";
        let mounts = cgroup2_mounts(mountinfo);
        assert_eq!(
            mounts,
            [
                ("/".into(), "/sys/fs/cgroup/unified".into()),
                ("/sub".into(), "/mnt/with space".into()),
            ]
        );
        assert_eq!(
            cgroup_dir(&mounts, Path::new("/")),
            Some("/sys/fs/cgroup/unified".into())
        );
        assert_eq!(
            cgroup_dir(&mounts, Path::new("/user.slice/a.scope")),
            Some("/sys/fs/cgroup/unified/user.slice/a.scope".into())
        );
        assert_eq!(
            cgroup_dir(&mounts[1..], Path::new("/sub/x")),
            Some("/mnt/with space/x".into())
        );
        assert_eq!(cgroup_dir(&mounts[1..], Path::new("/subx")), None);
        assert_eq!(unescape("a\\134b\\011"), PathBuf::from("a\\b\t"));
        assert_eq!(unescape("trailing\\"), PathBuf::from("trailing\\"));
    }

    #[test]
    fn parses_proc_cgroup() {
        assert_eq!(
            own_cgroup_path("4:memory:/x\n0::/user.slice/s.scope\n"),
            Some("/user.slice/s.scope".into())
        );
        assert_eq!(own_cgroup_path("0::/\n"), Some("/".into()));
        assert_eq!(own_cgroup_path("1:cpu:/\n"), None);
    }
}
