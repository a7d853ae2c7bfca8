/* A tiny multiboot guest that keeps the VGA text screen changing forever, so
 * QEMU's display channel carries a continuous load (a few MB/s) without any
 * guest disk. Built by the tests and benches/display_load.sh:
 *   as --32 -o vga-noise.o vga-noise.S && ld -m elf_i386 -Ttext 0x100000 -o vga-noise.elf vga-noise.o
 * and booted with `qemu-system-x86_64 ... -kernel vga-noise.elf`. The multiboot
 * header uses the a.out kludge (flag bit 16), so the loader needs no ELF sections. */
        .code32
        .text
        .globl _start
        .align 4
mb_header:
        .long 0x1BADB002                    /* magic */
        .long 0x00010000                    /* flags: addresses below are valid */
        .long -(0x1BADB002 + 0x00010000)    /* checksum */
        .long mb_header                     /* header_addr */
        .long 0x100000                      /* load_addr: start of .text */
        .long 0                             /* load_end_addr: the whole file */
        .long 0                             /* bss_end_addr: no bss */
        .long _start                        /* entry_addr */
_start:
        cli
        movl $0x2545F491, %eax              /* LCG state */
1:      movl $0xB8000, %edi                 /* VGA text buffer, 80x25 cells */
        movl $2000, %ecx
2:      imull $1103515245, %eax, %eax
        addl $12345, %eax
        movl %eax, %edx
        shrl $16, %edx
        movw %dx, (%edi)                    /* random character and attribute */
        addl $2, %edi
        loop 2b
        jmp 1b
