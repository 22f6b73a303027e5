//! The `weft` CNI plugin binary: read the environment and stdin, run the
//! command, print the result or a CNI error JSON.
//!
//! It links no C library: glibc's start-up alone (CPUID probing, which
//! traps under a hypervisor) costs more CPU than everything the plugin does
//! for an ADD. So this file is the whole runtime: the entry point, a bump
//! allocator (the process lives for milliseconds), the memory functions the
//! compiler calls, and a panic handler that still answers with an error
//! JSON (code 999): whatever arrives, the runtime gets a CNI answer.
#![no_std]
#![no_main]
#![allow(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use core::alloc::{GlobalAlloc, Layout};
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use weft_cni::error::code;
use weft_cni::exec::CniEnv;
use weft_cni::sys::{self, Environ, Fd};
use weft_cni::{CniError, plugin};

// The kernel starts the process with the stack pointer at argc, then argv
// and envp (each null-terminated). Align the stack as the ABI wants and
// hand that address to `weft_main`.
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym weft_main,
);

extern "C" fn weft_main(stack: *const usize) -> ! {
    // SAFETY: `stack` is what the kernel laid out: argc, argc argv
    // pointers and a null, then the null-terminated envp array.
    let env = unsafe {
        let argc = *stack;
        Environ::from_envp(stack.add(argc + 2) as *const *const u8)
    };
    sys::exit(answer(run(env)))
}

fn out(fd: i32, text: &str) {
    let _ = sys::write_all(fd, text.as_bytes());
}

/// Prints the outcome as the spec wants; the exit code.
fn answer(outcome: Result<Option<String>, CniError>) -> i32 {
    match outcome {
        Ok(Some(text)) => {
            out(Fd::STDOUT, &format!("{text}\n"));
            0
        }
        Ok(None) => 0,
        Err(e) => {
            out(Fd::STDERR, &format!("weft: {e}\n"));
            out(Fd::STDOUT, &format!("{}\n", e.to_json()));
            1
        }
    }
}

fn run(vars: Environ) -> Result<Option<String>, CniError> {
    if vars.get("CNI_COMMAND").is_none() {
        out(
            Fd::STDERR,
            &format!(
                "CNI plugin weft version {}\nCNI protocol versions supported: {}\n",
                env!("CARGO_PKG_VERSION"),
                plugin::SUPPORTED_VERSIONS.join(", ")
            ),
        );
        return Ok(None);
    }
    let env = CniEnv::from_environ(vars)?;
    let stdin = sys::read_to_end(Fd::STDIN, plugin::MAX_INPUT)
        .map_err(|e| CniError::new(code::IO, format!("reading stdin: {e}")))?;
    plugin::run(&env, &stdin)
}

/// Writes formatted text straight to a file descriptor (no allocation:
/// used while panicking).
struct Raw(i32);

impl core::fmt::Write for Raw {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        sys::write_all(self.0, s.as_bytes()).map_err(|_| core::fmt::Error)
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    static PANICKING: AtomicBool = AtomicBool::new(false);
    if !PANICKING.swap(true, Ordering::SeqCst) {
        use core::fmt::Write;
        let _ = writeln!(Raw(Fd::STDERR), "weft: internal error: {info}");
        out(
            Fd::STDOUT,
            "{\"cniVersion\":\"1.1.0\",\"code\":999,\"msg\":\"internal error in the weft plugin (see stderr)\"}\n",
        );
    }
    sys::exit(1)
}

/// Hands out memory from 1 MiB chunks and gives back only the latest
/// block (enough for a process that lives a few milliseconds); one thread.
struct Bump {
    next: AtomicUsize,
    end: AtomicUsize,
}

const CHUNK: usize = 1 << 20;

// SAFETY: every block is fresh memory from mmap, aligned as asked and not
// handed out twice; the plugin is single-threaded, so the load/store pairs
// below never race.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let align = layout.align().max(16);
        let start = (self.next.load(Ordering::Relaxed) + align - 1) & !(align - 1);
        if start != 0 && start + layout.size() <= self.end.load(Ordering::Relaxed) {
            self.next.store(start + layout.size(), Ordering::Relaxed);
            return start as *mut u8;
        }
        // A block larger than a chunk gets a mapping of its own.
        let len = (layout.size() + align).max(CHUNK);
        let Some(base) = sys::map_memory(len) else {
            return core::ptr::null_mut();
        };
        let base = base as usize;
        let start = (base + align - 1) & !(align - 1);
        if len == CHUNK || layout.size() + align <= CHUNK {
            self.next.store(start + layout.size(), Ordering::Relaxed);
            self.end.store(base + len, Ordering::Relaxed);
        }
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // The latest block goes back (serde_json's scratch strings).
        if ptr as usize + layout.size() == self.next.load(Ordering::Relaxed) {
            self.next.store(ptr as usize, Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The latest block grows in place when its chunk has room.
        let end_of = ptr as usize + layout.size();
        if end_of == self.next.load(Ordering::Relaxed)
            && ptr as usize + new_size <= self.end.load(Ordering::Relaxed)
        {
            self.next.store(ptr as usize + new_size, Ordering::Relaxed);
            return ptr;
        }
        // SAFETY: `new_size` with the old alignment is a valid layout (the
        // GlobalAlloc contract); the old block holds `layout.size()` bytes.
        unsafe {
            let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
            if !new.is_null() {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            }
            new
        }
    }
}

#[global_allocator]
static ALLOCATOR: Bump = Bump {
    next: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
};

// The memory functions the compiler emits calls to (the C library would
// provide them). Written with `rep` string instructions, never as loops the
// compiler could turn back into calls to themselves.

/// # Safety
/// C's memcpy: `n` bytes, valid and not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// C's memmove: `n` bytes, valid, possibly overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // No overlap that a forward copy would trample.
        // SAFETY: the caller's contract.
        unsafe { memcpy(dst, src, n) };
    } else {
        // SAFETY: the caller's contract; copies backwards from the last
        // byte with the direction flag set, and clears it again.
        unsafe {
            asm!("std", "rep movsb", "cld", inout("rcx") n => _,
                 inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                 options(nostack));
        }
    }
    dst
}

/// # Safety
/// C's memset: `n` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// C's memcmp: `n` readable bytes at each.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller's contract.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// C's bcmp: `n` readable bytes at each.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
/// C's strlen: a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller's contract.
    while unsafe { *s.add(n) } != 0 {
        n += 1;
    }
    n
}

// Never called: with panic = "abort" nothing unwinds, but the standard
// library's precompiled `alloc` still names the unwinder's hooks.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    sys::exit(134)
}

#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
