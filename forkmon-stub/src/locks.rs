//! glibc's locks that a checkpoint's thread holds across its open, handed
//! over to each child (docs/mechanism.md, "glibc's locks").
//!
//! A checkpoint may be made at an open inside library code: inside
//! `dlopen` (a plugin, an `iconv` module, an NSS module: all go through
//! the dynamic loader, which holds `dl_load_lock`), inside `setlocale` or
//! `newlocale` (which hold `__libc_setlocale_lock` for writing while they
//! read the locale's files). Two kinds of glibc lock remember their owner
//! by thread id: a recursive or error-checking `pthread_mutex_t` (the
//! loader's) in `__owner`, and a `pthread_rwlock_t` held for writing (the
//! locale's) in `__cur_writer`. A child forked with `_Fork()` runs on with
//! a new thread id: its unlock at the end of `dlopen` is refused (the
//! owner is not it), and its next `dlsym` waits for ever; its unlock at
//! the end of `setlocale` is taken for a reader's, and the next
//! `setlocale` waits for ever. glibc's `fork()` re-initialises the
//! loader's lock in the child; `_Fork()` repairs nothing.
//!
//! So at a candidate open the stub notes the opening thread, and each
//! child forked from the checkpoint looks for such locks that thread holds
//! in glibc's own data (the writable segments of libc and ld.so, where all
//! of them live) and makes itself their owner before it returns to the
//! program: what `fork()` does for the loader's lock, with the count kept,
//! so the library call in progress ends as it would have. Locks that remember
//! their owner by thread pointer (stdio's, libc's internal recursive
//! locks: the same address in the child) or not at all (plain internal
//! locks, `pthread_once`) need nothing.
//!
//! Where a lock cannot be handed over the open is not checkpointed
//! ([`Held::Unsafe`]): an open made by the loader itself (its code is
//! where the open returns to) while no lock of the loader was found held
//! means this glibc's loader lock is not one the stub knows.
use core::{
    ffi::{c_int, c_void},
    ptr,
    sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering},
};

/// Where glibc keeps its locks: writable data of libc and ld.so (RELRO
/// left out: nothing there is ever locked).
struct Regions {
    /// Start and end of each; the loader's first.
    bounds: [[AtomicUsize; 2]; MAX_REGIONS],
    len: AtomicUsize,
    /// The loader's executable code: an open returning there was made by
    /// the loader, which holds its lock.
    loader_text: [AtomicUsize; 2],
    /// Whether the first region is the loader's.
    loader_data: AtomicBool,
}

/// ld.so has one writable segment and libc one; room for a few more.
const MAX_REGIONS: usize = 6;

static REGIONS: Regions = Regions {
    bounds: [const { [AtomicUsize::new(0), AtomicUsize::new(0)] }; MAX_REGIONS],
    len: AtomicUsize::new(0),
    loader_text: [AtomicUsize::new(0), AtomicUsize::new(0)],
    loader_data: AtomicBool::new(false),
};

/// The thread id of the checkpoint's thread: each child takes over the
/// locks it holds.
static HELD_BY: AtomicI32 = AtomicI32::new(0);

/// Finds libc's and the loader's data and the loader's code. In the
/// constructor: `dl_iterate_phdr` takes the loader's lock.
///
/// # Safety
/// Constructor context.
pub unsafe fn find() {
    // SAFETY: getauxval has no preconditions; the callback only reads the
    // program headers the loader hands it.
    unsafe {
        let mut found = Objects {
            loader: libc::getauxval(libc::AT_BASE) as usize,
            libc: libc::getpid as *const () as usize,
        };
        libc::dl_iterate_phdr(Some(each_object), (&mut found as *mut Objects).cast());
    }
}

/// The two objects to find: by load address (the loader, from the
/// auxiliary vector) and by an address inside (libc, one of its functions).
struct Objects {
    loader: usize,
    libc: usize,
}

unsafe extern "C" fn each_object(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: the loader passes a valid info for the duration of the
    // call, with `dlpi_phnum` headers at `dlpi_phdr`; data is our Objects.
    unsafe {
        let objects = &*data.cast::<Objects>();
        let base = (*info).dlpi_addr as usize;
        let headers = core::slice::from_raw_parts((*info).dlpi_phdr, (*info).dlpi_phnum as usize);
        let span = |h: &libc::Elf64_Phdr| {
            let start = base + h.p_vaddr as usize;
            (start, start + h.p_memsz as usize)
        };
        let is_loader = base == objects.loader && base != 0;
        let is_libc = headers.iter().any(|h| {
            let (start, end) = span(h);
            h.p_type == libc::PT_LOAD && (start..end).contains(&objects.libc)
        });
        if !is_loader && !is_libc {
            return 0;
        }
        let relro = headers
            .iter()
            .find(|h| h.p_type == libc::PT_GNU_RELRO)
            .map(span);
        for header in headers.iter().filter(|h| h.p_type == libc::PT_LOAD) {
            let (mut start, end) = span(header);
            if is_loader && header.p_flags & libc::PF_X != 0 {
                REGIONS.loader_text[0].store(start, Ordering::Relaxed);
                REGIONS.loader_text[1].store(end, Ordering::Relaxed);
            }
            if header.p_flags & libc::PF_W == 0 {
                continue;
            }
            if let Some((relro_start, relro_end)) = relro
                && relro_start <= start
                && relro_end > start
            {
                start = relro_end;
            }
            add_region(start.next_multiple_of(8), end, is_loader);
        }
        0
    }
}

fn add_region(start: usize, end: usize, loader: bool) {
    let len = REGIONS.len.load(Ordering::Relaxed);
    if len == MAX_REGIONS || start >= end {
        return;
    }
    let slot = if loader && !REGIONS.loader_data.load(Ordering::Relaxed) {
        // The loader's first: `may_fork` finds its locks by their place.
        REGIONS.loader_data.store(true, Ordering::Relaxed);
        for i in (0..len).rev() {
            for edge in 0..2 {
                let value = REGIONS.bounds[i][edge].load(Ordering::Relaxed);
                REGIONS.bounds[i + 1][edge].store(value, Ordering::Relaxed);
            }
        }
        0
    } else {
        len
    };
    REGIONS.bounds[slot][0].store(start, Ordering::Relaxed);
    REGIONS.bounds[slot][1].store(end, Ordering::Relaxed);
    REGIONS.len.store(len + 1, Ordering::Relaxed);
}

/// Whether the opening thread's locks can pass to a child.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Held {
    /// Each child takes them over ([`hand_to_child`]).
    Safe,
    /// A child could not run on: do not checkpoint this open.
    Unsafe,
}

/// Whether a child forked here can run on: notes the thread that opened
/// (`tid`, stopped at an open that returns to `return_address`) for
/// [`hand_to_child`], and checks that an open the loader made is made
/// under a lock a child can take over.
///
/// The locks themselves are looked for by each child, while it waits
/// (an early child for its release, a standby for "go"): ~8 µs that are
/// then off the program's path.
///
/// # Safety
/// In the stub's handler, in the thread that opened.
pub unsafe fn may_fork(tid: i32, return_address: usize) -> Held {
    HELD_BY.store(tid, Ordering::Relaxed);
    let text = &REGIONS.loader_text;
    let in_loader = (text[0].load(Ordering::Relaxed)..text[1].load(Ordering::Relaxed))
        .contains(&return_address);
    if !in_loader {
        return Held::Safe;
    }
    let mut loader_lock = false;
    if REGIONS.loader_data.load(Ordering::Relaxed) {
        // SAFETY: region 0 is the loader's data, mapped and readable.
        unsafe { each_lock_held(0, tid, |_| loader_lock = true) };
    }
    if loader_lock {
        Held::Safe
    } else {
        Held::Unsafe
    }
}

/// In a child just forked from the checkpoint: becomes the owner of the
/// locks the checkpoint's thread held (see [`may_fork`]), so that the
/// library call the open was part of releases them, and later calls take
/// them again. A lock `fork()` re-initialised is left as it is.
///
/// # Safety
/// In a single-threaded child, before it returns to the program.
pub unsafe fn hand_to_child() {
    let parent = HELD_BY.load(Ordering::Relaxed);
    if parent == 0 {
        // No handler ran in this process (no thread to look for).
        return;
    }
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    for region in 0..REGIONS.len.load(Ordering::Relaxed) {
        // SAFETY: the regions are glibc's writable data, found at load;
        // this child is its only thread.
        unsafe {
            each_lock_held(region, parent, |owner| {
                ptr::write_volatile(owner as *mut i32, me)
            })
        };
    }
}

/// Calls `found` with the owner field of each lock in `region` that
/// thread `tid` holds, and that remembers it by thread id.
///
/// # Safety
/// `region` is one of [`REGIONS`].
unsafe fn each_lock_held(region: usize, tid: i32, mut found: impl FnMut(usize)) {
    let start = REGIONS.bounds[region][0].load(Ordering::Relaxed);
    let end = REGIONS.bounds[region][1].load(Ordering::Relaxed);
    // Both owner fields are the low half of an 8-aligned word (x86-64 is
    // little-endian): look for the thread id first, one load per word
    // (~8 µs for libc's 61 KB and ld.so's 5 KB here; checking each shape
    // at every place took twice as long), then at the lock around it.
    // SAFETY: [start, end) is a mapped, readable segment of libc or ld.so,
    // 8-aligned; atomics, since other threads may write it.
    let words =
        unsafe { core::slice::from_raw_parts(start as *const AtomicU64, (end - start) / 8) };
    for (index, word) in words.iter().enumerate() {
        if word.load(Ordering::Relaxed) as u32 != tid as u32 {
            continue;
        }
        let field = start + index * 8;
        // SAFETY: lock_owned_at reads only within [start, end).
        if unsafe { lock_owned_at(field, start, end, tid) } {
            found(field);
        }
    }
}

/// Whether `field`, which holds `tid`, is the owner field of a lock that
/// thread holds and that remembers it by thread id.
///
/// The shapes are glibc's ABI (`bits/struct_mutex.h`,
/// `bits/struct_rwlock.h`) as each is while held, checked field by field so
/// that other data is not taken for a lock.
///
/// # Safety
/// `[start, end)` is readable and 8-aligned, and holds `field`.
unsafe fn lock_owned_at(field: usize, start: usize, end: usize, tid: i32) -> bool {
    // The lock's words, if it fits in [start, end).
    let lock_at = |offset: usize, size: usize| {
        let at = field.checked_sub(offset)?;
        (at >= start && at + size <= end).then_some(move |index: usize| {
            // SAFETY: index < size / 4: within [start, end), readable.
            unsafe { ptr::read_volatile((at as *const i32).add(index)) }
        })
    };
    // pthread_mutex_t: __lock, __count, __owner, __nusers, __kind,
    // __spins and __elision, then __list (two pointers, null unless
    // robust).
    if let Some(word) = lock_at(MUTEX_OWNER, MUTEX_SIZE) {
        let (lock, count, owner, users) = (word(0), word(1), word(2), word(3));
        let kind = word(4) & MUTEX_KIND_MASK;
        if owner == tid
            && lock != 0
            && users >= 1
            && (word(6), word(7), word(8), word(9)) == (0, 0, 0, 0)
            && ((kind == MUTEX_RECURSIVE && count >= 1) || (kind == MUTEX_ERRORCHECK && count == 0))
        {
            return true;
        }
    }
    // pthread_rwlock_t: __readers, __writers, __wrphase_futex,
    // __writers_futex, __pad3, __pad4, __cur_writer, __shared,
    // __rwelision and __pad1, __pad2, __flags.
    if let Some(word) = lock_at(RWLOCK_WRITER, RWLOCK_SIZE) {
        let readers = word(0) as u32;
        if word(6) == tid
            && readers & RWLOCK_WRITE_HELD == RWLOCK_WRITE_HELD
            && (word(4), word(5), word(7), word(10), word(11)) == (0, 0, 0, 0, 0)
            && (0..=2).contains(&word(12))
        {
            return true;
        }
    }
    false
}

/// x86-64's `pthread_mutex_t` and `pthread_rwlock_t`, and where in each
/// the owner's thread id is.
const MUTEX_SIZE: usize = 40;
const MUTEX_OWNER: usize = 8;
const RWLOCK_SIZE: usize = 56;
const RWLOCK_WRITER: usize = 24;
/// `__kind`'s type bits without the flags glibc adds (elision, process
/// sharing); robust, priority-inheriting and -protecting mutexes keep
/// their bits and are not matched (glibc holds none across an open).
const MUTEX_KIND_MASK: i32 = 0x7f;
const MUTEX_RECURSIVE: i32 = 1;
const MUTEX_ERRORCHECK: i32 = 2;
/// `__readers` while a writer holds the lock: `PTHREAD_RWLOCK_WRPHASE`
/// and `PTHREAD_RWLOCK_WRLOCKED`.
const RWLOCK_WRITE_HELD: u32 = 0b11;

/// Forgets where glibc's locks are (`ENV_FORGET_LOCKS`, for tests): the
/// stub then refuses the loader's opens rather than hang.
pub fn forget() {
    REGIONS.len.store(0, Ordering::Relaxed);
    REGIONS.loader_data.store(false, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the lock at `lock` (of `size` bytes) is seen as held by
    /// `tid`, looked for as the children do: by its owner field.
    fn seen_held<T>(lock: &T, tid: i32) -> bool {
        let start = lock as *const T as usize;
        let end = start + size_of::<T>();
        (start..end).step_by(8).any(|field| {
            // SAFETY: reads within the lock, which outlives the call.
            let value = unsafe { ptr::read_volatile(field as *const i32) };
            // SAFETY: [start, end) is the lock itself, 8-aligned.
            value == tid && unsafe { lock_owned_at(field, start, end, tid) }
        })
    }

    /// The ABI the scan relies on, checked on this glibc with real locks:
    /// a recursive and an error-checking mutex, and a rwlock held for
    /// writing, are seen while this thread holds them, never otherwise
    /// (unlocked, or held for reading, or by another thread's id).
    #[test]
    fn glibcs_tid_owned_locks_are_seen_only_while_held() {
        // SAFETY: gettid has no preconditions; each lock is initialised
        // before use and used from this thread only.
        unsafe {
            let me = libc::gettid();
            for kind in [
                libc::PTHREAD_MUTEX_RECURSIVE,
                libc::PTHREAD_MUTEX_ERRORCHECK,
            ] {
                let mut attr: libc::pthread_mutexattr_t = core::mem::zeroed();
                libc::pthread_mutexattr_init(&mut attr);
                libc::pthread_mutexattr_settype(&mut attr, kind);
                let mut mutex: libc::pthread_mutex_t = core::mem::zeroed();
                libc::pthread_mutex_init(&mut mutex, &attr);
                assert!(!seen_held(&mutex, me), "unlocked, kind {kind}");
                libc::pthread_mutex_lock(&mut mutex);
                assert!(seen_held(&mutex, me), "locked, kind {kind}");
                assert!(!seen_held(&mutex, me + 1), "another thread's id");
                libc::pthread_mutex_unlock(&mut mutex);
                assert!(!seen_held(&mutex, me), "unlocked again, kind {kind}");
            }

            let mut rwlock: libc::pthread_rwlock_t = core::mem::zeroed();
            libc::pthread_rwlock_init(&mut rwlock, ptr::null());
            libc::pthread_rwlock_rdlock(&mut rwlock);
            assert!(!seen_held(&rwlock, me), "held for reading");
            libc::pthread_rwlock_unlock(&mut rwlock);
            libc::pthread_rwlock_wrlock(&mut rwlock);
            assert!(seen_held(&rwlock, me), "held for writing");
            libc::pthread_rwlock_unlock(&mut rwlock);
            assert!(!seen_held(&rwlock, me), "unlocked");
        }
    }

    /// On this glibc: the loader's data comes first, and the lock
    /// `dl_iterate_phdr` holds while it calls back (the loader's
    /// `dl_load_write_lock`) is found there, held by this thread.
    #[test]
    fn the_loaders_lock_is_found_in_its_data() {
        unsafe extern "C" fn callback(
            _info: *mut libc::dl_phdr_info,
            _size: usize,
            data: *mut c_void,
        ) -> c_int {
            // SAFETY: data is the test's counter; region 0 is the
            // loader's data, found by `find`.
            unsafe {
                let found = &mut *data.cast::<usize>();
                each_lock_held(0, libc::gettid(), |_| *found += 1);
            }
            1
        }
        // SAFETY: the only test that calls `find`; the callback only
        // reads the loader's data.
        unsafe {
            find();
            assert!(REGIONS.loader_data.load(Ordering::Relaxed));
            assert!(
                REGIONS.len.load(Ordering::Relaxed) >= 2,
                "ld.so's and libc's"
            );
            assert!(REGIONS.loader_text[0].load(Ordering::Relaxed) != 0);
            let mut found = 0usize;
            libc::dl_iterate_phdr(Some(callback), (&mut found as *mut usize).cast());
            assert_eq!(found, 1, "held inside dl_iterate_phdr");
            let mut after = 0usize;
            each_lock_held(0, libc::gettid(), |_| after += 1);
            assert_eq!(after, 0, "released after it");
        }
    }

    /// What a child does, on a recursive mutex locked twice: the new owner
    /// unlocks it twice, and can lock it again.
    #[test]
    fn a_mutex_handed_over_is_released_by_its_new_owner() {
        // SAFETY: as above; the owner field is rewritten as a child does.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = core::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_settype(&mut attr, libc::PTHREAD_MUTEX_RECURSIVE);
            let mut mutex: libc::pthread_mutex_t = core::mem::zeroed();
            libc::pthread_mutex_init(&mut mutex, &attr);
            libc::pthread_mutex_lock(&mut mutex);
            libc::pthread_mutex_lock(&mut mutex);
            let me = libc::gettid();
            // As the parent left it: owned by another thread id.
            let owner =
                (&mut mutex as *mut libc::pthread_mutex_t as usize + MUTEX_OWNER) as *mut i32;
            ptr::write_volatile(owner, me + 1);
            assert_eq!(libc::pthread_mutex_unlock(&mut mutex), libc::EPERM);
            // Handed over.
            ptr::write_volatile(owner, me);
            assert_eq!(libc::pthread_mutex_unlock(&mut mutex), 0);
            assert_eq!(libc::pthread_mutex_unlock(&mut mutex), 0);
            assert_eq!(libc::pthread_mutex_trylock(&mut mutex), 0);
            libc::pthread_mutex_unlock(&mut mutex);
        }
    }
}
