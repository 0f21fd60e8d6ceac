//! Small ring-3 programs, position-independent machine code that a process
//! gets a copy of in its own code area. System calls: `int 0x80` with the
//! number in `rax`: 0 exit(`rdi`), 1 report(`rdi`), 2 fork (0 in the
//! child, the child's id in the parent). Entry: `rdi` = heap base, `rsi` =
//! an argument.

core::arch::global_asm!(
    r#"
    .section .text.user_programs, "ax"
    .balign 4096
    .global kmem_user_programs_start
kmem_user_programs_start:

    /* Stores its tag at heap[0] and reports it, writes tag + i to 8 heap
     * pages, sums them, uses 3 pages of stack, reports the sum, exits 0. */
    .global kmem_user_tag
kmem_user_tag:
    mov r12, rdi
    mov r13, rsi
    mov [r12], r13
    mov rdi, [r12]
    mov eax, 1
    int 0x80
    xor ecx, ecx
.Ltag_fill:
    mov rax, rcx
    shl rax, 12
    lea rdx, [r13 + rcx]
    mov [r12 + rax + 8], rdx
    inc rcx
    cmp rcx, 8
    jb .Ltag_fill
    xor ecx, ecx
    xor ebx, ebx
.Ltag_sum:
    mov rax, rcx
    shl rax, 12
    add rbx, [r12 + rax + 8]
    inc rcx
    cmp rcx, 8
    jb .Ltag_sum
    sub rsp, 12288
    mov [rsp], rbx
    mov rdi, [rsp]
    add rsp, 12288
    mov eax, 1
    int 0x80
    xor edi, edi
    xor eax, eax
    int 0x80
    ud2

    /* Stores its tag at heap[0], forks. The child reports heap[0], writes
     * 0xc41d there, reports it, exits 1; the parent writes 0x9a7e, reports
     * heap[0], exits 0. */
    .global kmem_user_fork
kmem_user_fork:
    mov r12, rdi
    mov [r12], rsi
    mov eax, 2
    int 0x80
    test rax, rax
    jnz .Lfork_parent
    mov rdi, [r12]
    mov eax, 1
    int 0x80
    mov qword ptr [r12], 0xc41d
    mov rdi, [r12]
    mov eax, 1
    int 0x80
    mov edi, 1
    xor eax, eax
    int 0x80
    ud2
.Lfork_parent:
    mov qword ptr [r12], 0x9a7e
    mov rdi, [r12]
    mov eax, 1
    int 0x80
    xor edi, edi
    xor eax, eax
    int 0x80
    ud2

    /* Writes 0x7a9 at heap[0] and at shared[0] (`rsi`, a shared
     * mapping), forks. The child (run first) reports shared[0], writes
     * 0xc41d at heap[0] and 0x5a4ed at shared[8], exits 1; the parent then
     * reports shared[8] (the child's message) and heap[0] (its own), exits 0. */
    .global kmem_user_share
kmem_user_share:
    mov r12, rdi
    mov r13, rsi
    mov qword ptr [r12], 0x7a9
    mov qword ptr [r13], 0x7a9
    mov eax, 2
    int 0x80
    test rax, rax
    jnz .Lshare_parent
    mov rdi, [r13]
    mov eax, 1
    int 0x80
    mov qword ptr [r12], 0xc41d
    mov qword ptr [r13 + 8], 0x5a4ed
    mov edi, 1
    xor eax, eax
    int 0x80
    ud2
.Lshare_parent:
    mov rdi, [r13 + 8]
    mov eax, 1
    int 0x80
    mov rdi, [r12]
    mov eax, 1
    int 0x80
    xor edi, edi
    xor eax, eax
    int 0x80
    ud2

    /* Reads the 8 bytes at `rsi` and reports them. */
    .global kmem_user_read
kmem_user_read:
    mov rdi, [rsi]
    mov eax, 1
    int 0x80
    xor edi, edi
    xor eax, eax
    int 0x80
    ud2

    /* Writes 1 at `rsi`. */
    .global kmem_user_write
kmem_user_write:
    mov qword ptr [rsi], 1
    xor edi, edi
    xor eax, eax
    int 0x80
    ud2

    /* Jumps to `rsi`. */
    .global kmem_user_jump
kmem_user_jump:
    jmp rsi

    .balign 16
    .global kmem_user_programs_end
kmem_user_programs_end:
    .text
"#
);

extern "C" {
    static kmem_user_programs_start: u8;
    static kmem_user_programs_end: u8;
    static kmem_user_tag: u8;
    static kmem_user_fork: u8;
    static kmem_user_share: u8;
    static kmem_user_read: u8;
    static kmem_user_write: u8;
    static kmem_user_jump: u8;
}

/// One of the programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// Tags its heap, touches 8 heap pages and 3 stack pages, reports.
    Tag,
    /// Forks; parent and child write different values at the same address.
    Fork,
    /// Forks and passes a message from child to parent through the shared
    /// mapping at the address given as its argument.
    Share,
    /// Reads the address given as its argument.
    Read,
    /// Writes the address given as its argument.
    Write,
    /// Jumps to the address given as its argument.
    Jump,
}

/// The machine code of all programs: one blob, copied whole.
pub fn code() -> &'static [u8] {
    let (start, end) = (
        &raw const kmem_user_programs_start,
        &raw const kmem_user_programs_end,
    );
    // SAFETY: both symbols delimit the `.text.user_programs` blob above,
    // in the kernel's read-only text.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

impl Program {
    /// Offset of its entry point in [`code`].
    pub fn entry(self) -> u64 {
        let sym = match self {
            Self::Tag => &raw const kmem_user_tag,
            Self::Fork => &raw const kmem_user_fork,
            Self::Share => &raw const kmem_user_share,
            Self::Read => &raw const kmem_user_read,
            Self::Write => &raw const kmem_user_write,
            Self::Jump => &raw const kmem_user_jump,
        };
        sym as u64 - &raw const kmem_user_programs_start as u64
    }
}
