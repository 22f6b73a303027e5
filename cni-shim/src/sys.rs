//! The operating system, reached with raw Linux system calls: files, pipes,
//! fork and exec. The plugin links no C library at all, because glibc's
//! start-up alone (CPU feature probing with CPUID, which traps under a
//! hypervisor) costs more than everything the plugin does for an ADD; weftd
//! uses the same calls (install-cni, subnet.env), so there is one
//! implementation of each. Only this module holds `unsafe` code.
//!
//! x86_64 Linux only, like the image weft ships.
#![allow(unsafe_code)]

use alloc::string::String;
use alloc::vec::Vec;
use alloc::{format, vec};
use core::arch::asm;
use core::fmt;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!("weft's CNI plugin speaks to Linux on x86_64 only");

mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const MMAP: usize = 9;
    pub const GETPID: usize = 39;
    pub const FORK: usize = 57;
    pub const EXECVE: usize = 59;
    pub const EXIT_GROUP: usize = 231;
    pub const WAIT4: usize = 61;
    pub const FCNTL: usize = 72;
    pub const FSYNC: usize = 74;
    pub const FCHMOD: usize = 91;
    pub const GETDENTS64: usize = 217;
    pub const OPENAT: usize = 257;
    pub const MKDIRAT: usize = 258;
    pub const UNLINKAT: usize = 263;
    pub const RENAMEAT: usize = 264;
    pub const DUP3: usize = 292;
    pub const PIPE2: usize = 293;
    pub const STATX: usize = 332;
}

const AT_FDCWD: isize = -100;
const O_RDONLY: usize = 0;
const O_WRONLY: usize = 1;
const O_CREAT: usize = 0o100;
const O_TRUNC: usize = 0o1000;
const O_DIRECTORY: usize = 0o200000;
const O_CLOEXEC: usize = 0o2000000;
const F_SETPIPE_SZ: usize = 1031;
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
const S_IFDIR: u16 = 0o040000;

/// A failed system call's error number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(2);
    pub const EINTR: Errno = Errno(4);
    pub const EEXIST: Errno = Errno(17);
    pub const EINVAL: Errno = Errno(22);
    pub const E2BIG: Errno = Errno(7);

    fn text(self) -> &'static str {
        match self.0 {
            1 => "Operation not permitted",
            2 => "No such file or directory",
            5 => "Input/output error",
            7 => "Argument list too long",
            8 => "Exec format error",
            12 => "Cannot allocate memory",
            13 => "Permission denied",
            17 => "File exists",
            20 => "Not a directory",
            21 => "Is a directory",
            22 => "Invalid argument",
            24 => "Too many open files",
            28 => "No space left on device",
            30 => "Read-only file system",
            36 => "File name too long",
            40 => "Too many levels of symbolic links",
            _ => "system error",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (os error {})", self.text(), self.0)
    }
}

impl core::error::Error for Errno {}

pub type Result<T> = core::result::Result<T, Errno>;

// SAFETY (all four): a system call with plain integer arguments; the
// callers below pass pointers only to buffers that outlive the call and are
// as long as the length they pass with them. rcx and r11 are clobbered by
// the `syscall` instruction.
unsafe fn syscall1(n: usize, a: usize) -> isize {
    let r: isize;
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => r, in("rdi") a,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r
}

unsafe fn syscall3(n: usize, a: usize, b: usize, c: usize) -> isize {
    let r: isize;
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => r, in("rdi") a, in("rsi") b, in("rdx") c,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r
}

unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let r: isize;
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => r, in("rdi") a, in("rsi") b, in("rdx") c,
             in("r10") d, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r
}

unsafe fn syscall6(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let r: isize;
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => r, in("rdi") a, in("rsi") b, in("rdx") c,
             in("r10") d, in("r8") e, in("r9") f, lateout("rcx") _, lateout("r11") _,
             options(nostack));
    }
    r
}

fn check(r: isize) -> Result<usize> {
    if (-4095..0).contains(&r) {
        Err(Errno(-r as i32))
    } else {
        Ok(r as usize)
    }
}

/// `s` with a terminating NUL, for the kernel.
fn c_string(s: &str) -> Result<Vec<u8>> {
    if s.as_bytes().contains(&0) {
        return Err(Errno::EINVAL);
    }
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    Ok(v)
}

/// An open file descriptor, closed on drop.
#[derive(Debug)]
pub struct Fd(i32);

impl Fd {
    pub const STDIN: i32 = 0;
    pub const STDOUT: i32 = 1;
    pub const STDERR: i32 = 2;

    pub fn raw(&self) -> i32 {
        self.0
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closes a descriptor this Fd owns.
        unsafe { syscall1(nr::CLOSE, self.0 as usize) };
    }
}

fn open(path: &str, flags: usize, mode: u32) -> Result<Fd> {
    let p = c_string(path)?;
    // SAFETY: `p` is NUL-terminated and lives across the call.
    let fd = check(unsafe {
        syscall4(
            nr::OPENAT,
            AT_FDCWD as usize,
            p.as_ptr() as usize,
            flags | O_CLOEXEC,
            mode as usize,
        )
    })?;
    Ok(Fd(fd as i32))
}

/// Reads from `fd` into `buf`, retrying on EINTR.
pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize> {
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let r =
            check(unsafe { syscall3(nr::READ, fd as usize, buf.as_mut_ptr() as usize, buf.len()) });
        if r != Err(Errno::EINTR) {
            return r;
        }
    }
}

/// Writes all of `bytes` to `fd`.
pub fn write_all(fd: i32, mut bytes: &[u8]) -> Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is readable for its whole length.
        match check(unsafe {
            syscall3(nr::WRITE, fd as usize, bytes.as_ptr() as usize, bytes.len())
        }) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads `fd` to its end, but never more than `limit` + 1 bytes (so a
/// caller can tell that the input was too long).
pub fn read_to_end(fd: i32, limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    while out.len() <= limit {
        let want = chunk.len().min(limit + 1 - out.len());
        let n = read(fd, &mut chunk[..want])?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

/// The whole content of the file at `path`.
pub fn read_file(path: &str) -> Result<Vec<u8>> {
    let f = open(path, O_RDONLY, 0)?;
    read_to_end(f.raw(), usize::MAX - 1)
}

fn file_type(path: &str) -> Result<u16> {
    let p = c_string(path)?;
    // struct statx is 256 bytes; stx_mode is the u16 at offset 28.
    let mut buf = [0u64; 32];
    const STATX_TYPE: usize = 1;
    // SAFETY: `p` is NUL-terminated, `buf` is a writable 256-byte statx.
    check(unsafe {
        syscall6(
            nr::STATX,
            AT_FDCWD as usize,
            p.as_ptr() as usize,
            0,
            STATX_TYPE,
            buf.as_mut_ptr() as usize,
            0,
        )
    })?;
    let mode = (buf[3] >> 32) as u16;
    Ok(mode & S_IFMT)
}

/// Whether `path` is a regular file (following symlinks).
pub fn is_file(path: &str) -> bool {
    file_type(path) == Ok(S_IFREG)
}

/// Whether `path` is a directory (following symlinks).
pub fn is_dir(path: &str) -> bool {
    file_type(path) == Ok(S_IFDIR)
}

/// Removes the file at `path`.
pub fn remove_file(path: &str) -> Result<()> {
    let p = c_string(path)?;
    // SAFETY: `p` is NUL-terminated.
    check(unsafe { syscall3(nr::UNLINKAT, AT_FDCWD as usize, p.as_ptr() as usize, 0) }).map(drop)
}

/// Creates `path` and its missing parents with `mode` (the mode is set
/// exactly, whatever the umask, on the directories created here).
pub fn create_dir_all(path: &str, mode: u32) -> Result<()> {
    if path.is_empty() || is_dir(path) {
        return Ok(());
    }
    if let Some((parent, _)) = path.trim_end_matches('/').rsplit_once('/')
        && !parent.is_empty()
    {
        create_dir_all(parent, mode)?;
    }
    let p = c_string(path)?;
    // SAFETY: `p` is NUL-terminated.
    match check(unsafe {
        syscall3(
            nr::MKDIRAT,
            AT_FDCWD as usize,
            p.as_ptr() as usize,
            mode as usize,
        )
    }) {
        Ok(_) => {
            let d = open(path, O_RDONLY | O_DIRECTORY, 0)?;
            // SAFETY: plain integer arguments.
            check(unsafe { syscall3(nr::FCHMOD, d.raw() as usize, mode as usize, 0) }).map(drop)
        }
        Err(Errno::EEXIST) if is_dir(path) => Ok(()),
        Err(e) => Err(e),
    }
}

fn fsync(fd: &Fd) -> Result<()> {
    // SAFETY: plain integer argument.
    check(unsafe { syscall1(nr::FSYNC, fd.raw() as usize) }).map(drop)
}

fn rename(from: &str, to: &str) -> Result<()> {
    let (f, t) = (c_string(from)?, c_string(to)?);
    // SAFETY: both paths are NUL-terminated.
    check(unsafe {
        syscall4(
            nr::RENAMEAT,
            AT_FDCWD as usize,
            f.as_ptr() as usize,
            AT_FDCWD as usize,
            t.as_ptr() as usize,
        )
    })
    .map(drop)
}

fn getpid() -> u32 {
    // SAFETY: no arguments.
    unsafe { syscall1(nr::GETPID, 0) as u32 }
}

/// Writes `bytes` to `path` so that no reader ever sees half of it: a
/// temporary file in the same directory (mode `file_mode`), fsync, rename
/// over `path`, fsync of the directory. Missing directories are created
/// with `dir_mode`. Returns whether anything was written (false when the
/// file already held exactly these bytes).
pub fn write_atomic(path: &str, bytes: &[u8], file_mode: u32, dir_mode: u32) -> Result<bool> {
    if read_file(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let (dir, name) = match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => (".", path),
    };
    create_dir_all(dir, dir_mode)?;
    let tmp = format!("{dir}/.{name}.tmp-{}", getpid());
    let written = (|| {
        let f = open(&tmp, O_WRONLY | O_CREAT | O_TRUNC, file_mode)?;
        // SAFETY: plain integer arguments.
        check(unsafe { syscall3(nr::FCHMOD, f.raw() as usize, file_mode as usize, 0) })?;
        write_all(f.raw(), bytes)?;
        fsync(&f)?;
        drop(f);
        rename(&tmp, path)?;
        fsync(&open(dir, O_RDONLY | O_DIRECTORY, 0)?)
    })();
    if written.is_err() {
        let _ = remove_file(&tmp);
    }
    written.map(|()| true)
}

/// The names in directory `path` (without "." and "..").
pub fn list_dir(path: &str) -> Result<Vec<String>> {
    let d = open(path, O_RDONLY | O_DIRECTORY, 0)?;
    let mut names = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = check(unsafe {
            syscall3(
                nr::GETDENTS64,
                d.raw() as usize,
                buf.as_mut_ptr() as usize,
                buf.len(),
            )
        })?;
        if n == 0 {
            return Ok(names);
        }
        // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
        let mut at = 0;
        while at + 19 <= n {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen == 0 || at + reclen > n {
                break;
            }
            let raw = &buf[at + 19..at + reclen];
            let raw = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
            if raw != b"." && raw != b".." {
                names.push(String::from_utf8_lossy(raw).into_owned());
            }
            at += reclen;
        }
    }
}

/// A process environment: `KEY=VALUE` entries, each NUL-terminated, ready
/// to hand to execve.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Environ(Vec<Vec<u8>>);

impl Environ {
    /// From (key, value) pairs.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut e = Environ::default();
        for (k, v) in pairs {
            e = e.with(k.as_ref(), v.as_ref());
        }
        e
    }

    /// From raw entries as `envp` holds them: each entry's bytes up to its
    /// first NUL, whatever they are (not checked for `=` or UTF-8, as the
    /// kernel does not check them either).
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Environ(
            entries
                .into_iter()
                .map(|e| {
                    let mut v: Vec<u8> = e.iter().copied().take_while(|&b| b != 0).collect();
                    v.push(0);
                    v
                })
                .collect(),
        )
    }

    /// From the NUL-terminated `envp` array the kernel passed to the
    /// process.
    ///
    /// # Safety
    /// `envp` must be null or point to a null-terminated array of pointers
    /// to NUL-terminated strings that stay valid while this runs.
    pub unsafe fn from_envp(envp: *const *const u8) -> Self {
        let mut out = Vec::new();
        if envp.is_null() {
            return Environ(out);
        }
        let mut i = 0;
        loop {
            // SAFETY: the array is null-terminated (caller's contract).
            let p = unsafe { *envp.add(i) };
            if p.is_null() {
                return Environ(out);
            }
            let mut len = 0;
            // SAFETY: each entry is NUL-terminated (caller's contract).
            while unsafe { *p.add(len) } != 0 {
                len += 1;
            }
            // SAFETY: `len` bytes before the NUL are readable.
            let mut v = unsafe { core::slice::from_raw_parts(p, len) }.to_vec();
            v.push(0);
            out.push(v);
            i += 1;
        }
    }

    /// The value of `key`, if set and UTF-8.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find_map(|e| {
            let e = &e[..e.len() - 1];
            let rest = e.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
            core::str::from_utf8(rest).ok()
        })
    }

    /// This environment with `key` set to `value`.
    pub fn with(&self, key: &str, value: &str) -> Environ {
        let mut out: Vec<Vec<u8>> = self
            .0
            .iter()
            .filter(|e| !(e.starts_with(key.as_bytes()) && e.get(key.len()) == Some(&b'=')))
            .cloned()
            .collect();
        let mut v = Vec::with_capacity(key.len() + value.len() + 2);
        v.extend_from_slice(key.as_bytes());
        v.push(b'=');
        v.extend_from_slice(value.as_bytes());
        v.retain(|&b| b != 0);
        v.push(0);
        out.push(v);
        Environ(out)
    }

    fn pointers(&self) -> Vec<*const u8> {
        let mut p: Vec<*const u8> = self.0.iter().map(|e| e.as_ptr()).collect();
        p.push(core::ptr::null());
        p
    }
}

/// A pipe whose read end holds `bytes` already, its write end closed, so a
/// child reading it can never block us or kill us with SIGPIPE.
fn filled_pipe(bytes: &[u8]) -> Result<Fd> {
    let (r, w) = pipe()?;
    if bytes.len() > 64 * 1024 {
        // SAFETY: plain integer arguments.
        check(unsafe { syscall3(nr::FCNTL, w.raw() as usize, F_SETPIPE_SZ, bytes.len()) })
            .map_err(|_| Errno::E2BIG)?;
    }
    write_all(w.raw(), bytes)?;
    Ok(r)
}

fn pipe() -> Result<(Fd, Fd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` holds the two descriptors the kernel writes.
    check(unsafe { syscall3(nr::PIPE2, fds.as_mut_ptr() as usize, O_CLOEXEC, 0) })?;
    Ok((Fd(fds[0]), Fd(fds[1])))
}

/// What execve needs, built before any fork: after fork the child only
/// makes system calls, so it is safe even in a multi-threaded parent.
struct Exec<'a> {
    path: Vec<u8>,
    argv: [*const u8; 2],
    envp: Vec<*const u8>,
    _env: core::marker::PhantomData<&'a Environ>,
}

impl<'a> Exec<'a> {
    fn new(exe: &str, env: &'a Environ) -> Result<Exec<'a>> {
        Ok(Exec {
            path: c_string(exe)?,
            argv: [core::ptr::null(), core::ptr::null()],
            envp: env.pointers(),
            _env: core::marker::PhantomData,
        })
    }

    /// Runs execve; returns only on failure.
    fn exec(&mut self) -> Errno {
        self.argv[0] = self.path.as_ptr();
        // SAFETY: path, argv and envp are NUL-/null-terminated and outlive
        // the call (the environment's strings are owned by the caller's
        // Environ, borrowed for as long as this Exec).
        let r = unsafe {
            syscall3(
                nr::EXECVE,
                self.path.as_ptr() as usize,
                self.argv.as_ptr() as usize,
                self.envp.as_ptr() as usize,
            )
        };
        check(r).err().unwrap_or(Errno::EINVAL)
    }
}

fn dup_onto(from: i32, to: i32) -> Result<()> {
    const F_SETFD: usize = 2;
    // SAFETY: plain integer arguments.
    check(unsafe {
        if from == to {
            // Already in place: only keep it open across exec.
            syscall3(nr::FCNTL, to as usize, F_SETFD, 0)
        } else {
            syscall3(nr::DUP3, from as usize, to as usize, 0)
        }
    })
    .map(drop)
}

/// Replaces this process with `exe`, its stdin a pipe holding `stdin`, in
/// environment `env`; stdout and stderr stay this process's. Returns only
/// when it could not.
pub fn exec_with_input(exe: &str, env: &Environ, stdin: &[u8]) -> Errno {
    let run = || -> Result<()> {
        let mut e = Exec::new(exe, env)?;
        let input = filled_pipe(stdin)?;
        dup_onto(input.raw(), Fd::STDIN)?;
        Err(e.exec())
    };
    run().err().unwrap_or(Errno::EINVAL)
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status: {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// Runs `exe` in `env` with `stdin` as its input and this process's
/// stderr; waits for it and returns how it ended and its stdout.
pub fn run(exe: &str, env: &Environ, stdin: &[u8]) -> Result<(Exit, Vec<u8>)> {
    let mut e = Exec::new(exe, env)?;
    let input = filled_pipe(stdin)?;
    let (out_r, out_w) = pipe()?;
    // A pipe the child writes one status word to if its exec fails
    // (close-on-exec: EOF without data means the exec worked).
    let (err_r, err_w) = pipe()?;
    // SAFETY: fork. The child below touches only memory prepared before
    // the fork and makes only system calls, then execs or exits.
    let pid = check(unsafe { syscall3(nr::FORK, 0, 0, 0) })?;
    if pid == 0 {
        let errno = match dup_onto(input.raw(), Fd::STDIN)
            .and_then(|()| dup_onto(out_w.raw(), Fd::STDOUT))
        {
            Ok(()) => e.exec(),
            Err(errno) => errno,
        };
        let _ = write_all(err_w.raw(), &errno.0.to_ne_bytes());
        exit(127);
    }
    drop((input, out_w, err_w));
    let out = read_to_end(out_r.raw(), usize::MAX - 1);
    let mut word = [0u8; 4];
    let failed = read(err_r.raw(), &mut word);
    let status = wait(pid as i32)?;
    if failed == Ok(4) {
        return Err(Errno(i32::from_ne_bytes(word)));
    }
    Ok((status, out?))
}

fn wait(pid: i32) -> Result<Exit> {
    let mut status = 0i32;
    loop {
        // SAFETY: `status` is a writable int.
        let r = check(unsafe {
            syscall4(
                nr::WAIT4,
                pid as usize,
                &mut status as *mut i32 as usize,
                0,
                0,
            )
        });
        match r {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(if status & 0x7f == 0 {
        Exit::Code((status >> 8) & 0xff)
    } else {
        Exit::Signal(status & 0x7f)
    })
}

/// Ends the process with `code`.
pub fn exit(code: i32) -> ! {
    loop {
        // SAFETY: exit_group does not return.
        unsafe { syscall1(nr::EXIT_GROUP, code as usize) };
    }
}

/// Maps `len` bytes of fresh zeroed memory (for the plugin's allocator).
pub fn map_memory(len: usize) -> Option<*mut u8> {
    const PROT_READ_WRITE: usize = 3;
    const MAP_PRIVATE_ANONYMOUS: usize = 0x22;
    // SAFETY: an anonymous private mapping chosen by the kernel touches no
    // existing memory.
    let r = unsafe {
        syscall6(
            nr::MMAP,
            0,
            len,
            PROT_READ_WRITE,
            MAP_PRIVATE_ANONYMOUS,
            usize::MAX,
            0,
        )
    };
    check(r).ok().map(|p| p as *mut u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    fn scratch(tag: &str) -> String {
        let d = std::env::temp_dir().join(format!("weft-sys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.to_str().unwrap().to_string()
    }

    #[test]
    fn files_are_written_atomically_read_listed_and_removed() {
        let dir = scratch("files");
        let path = format!("{dir}/a/b/c.json");
        assert_eq!(read_file(&path), Err(Errno::ENOENT));
        assert_eq!(write_atomic(&path, b"one", 0o600, 0o700), Ok(true));
        assert_eq!(write_atomic(&path, b"one", 0o600, 0o700), Ok(false));
        assert_eq!(write_atomic(&path, b"two", 0o600, 0o700), Ok(true));
        assert_eq!(read_file(&path).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&format!("{dir}/a/b")), 0o700);
        assert!(is_file(&path) && !is_dir(&path));
        assert!(is_dir(&format!("{dir}/a")) && !is_file(&format!("{dir}/a")));
        assert_eq!(list_dir(&format!("{dir}/a/b")).unwrap(), ["c.json"]);
        remove_file(&path).unwrap();
        assert_eq!(remove_file(&path), Err(Errno::ENOENT));
        assert!(list_dir(&format!("{dir}/a/b")).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn children_get_their_input_environment_and_report_how_they_ended() {
        let env = Environ::from_pairs([("A", "1"), ("B", "2")]).with("A", "3");
        assert_eq!(env.get("A"), Some("3"));
        assert_eq!(env.get("B"), Some("2"));
        assert_eq!(env.get("C"), None);
        let (exit, out) = run("/bin/sh", &env, b"echo $A$B; exit 3").unwrap();
        assert_eq!(exit, Exit::Code(3));
        assert_eq!(std::str::from_utf8(&out).unwrap().trim(), "32");
        let (exit, _) = run("/bin/sh", &env, b"kill -9 $$").unwrap();
        assert_eq!(exit, Exit::Signal(9));
        assert_eq!(run("/nonexistent/x", &env, b"").unwrap_err(), Errno::ENOENT);
        let big = vec![b'#'; 200 * 1024];
        let (exit, _) = run("/bin/sh", &env, &big).unwrap();
        assert!(exit.success(), "a 200 KiB input fits the enlarged pipe");
    }
}
