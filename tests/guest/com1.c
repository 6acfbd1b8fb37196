/*
 * A polling driver of a PC's COM1 (a 16550A at 0x3f8), written from the
 * TI PC16550D datasheet, with the POST port and the CMOS RTC: what issue
 * 15's devices must run unmodified.
 *
 *   com1    program COM1 (115200 8N1, FIFOs), write "hello from COM1\n"
 *           (waiting for THRE before each byte), write POST code 0x2a,
 *           print the RTC's date and time (BCD, as a BIOS sets it), then
 *           echo every received byte (waiting for DR) until a line "bye",
 *           and print "echoed N" (the bytes echoed).
 *
 *   com1 hlt  iopl(3), print "halting", halt until the UART has received
 *           a byte (hlt returns when it has), print "woke" and the byte.
 *
 * It asks for the ports with ioperm(2) and goes on if that fails, so that
 * natively, where the host has no ioperm (ENOSYS) or the caller is not
 * privileged, the first access dies of SIGSEGV as it would.
 */
#include <stdio.h>
#include <sys/io.h>

#define COM1 0x3f8
#define THR (COM1 + 0)
#define RBR (COM1 + 0)
#define DLL (COM1 + 0)
#define DLM (COM1 + 1)
#define FCR (COM1 + 2)
#define LCR (COM1 + 3)
#define MCR (COM1 + 4)
#define LSR (COM1 + 5)
#define LSR_DR 0x01
#define LSR_THRE 0x20

static void put(unsigned char c)
{
    while (!(inb(LSR) & LSR_THRE))
        ;
    outb(c, THR);
}

static unsigned cmos(unsigned char reg)
{
    outb(reg, 0x70);
    unsigned v = inb(0x71);
    return (v >> 4) * 10 + (v & 0x0f); /* BCD (status B bit 2 clear) */
}

int main(int argc, char **argv)
{
    if (argc > 1 && argv[1][0] == 'h') { /* hlt */
        if (iopl(3))
            perror("iopl");
        printf("halting\n");
        fflush(stdout);
        do
            __asm__ volatile("hlt");
        while (!(inb(LSR) & LSR_DR));
        printf("woke %c\n", inb(RBR));
        return 0;
    }
    if (ioperm(COM1, 8, 1) || ioperm(0x80, 1, 1) || ioperm(0x70, 2, 1))
        perror("ioperm");
    outb(0x80, LCR); /* DLAB: the divisor latch */
    outb(1, DLL);    /* 115200 baud */
    outb(0, DLM);
    outb(0x03, LCR); /* 8N1, DLAB off */
    outb(0xc7, FCR); /* FIFOs on, both cleared, trigger at 14 */
    outb(0x0b, MCR); /* DTR, RTS, OUT2 */
    for (const char *p = "hello from COM1\n"; *p; p++)
        put((unsigned char)*p);
    outb(0x2a, 0x80);
    unsigned s = cmos(0x00), mi = cmos(0x02), h = cmos(0x04);
    unsigned d = cmos(0x07), mo = cmos(0x08), y = cmos(0x09), c = cmos(0x32);
    if (cmos(0x00) != s) /* an update in between: read again */
        s = cmos(0x00), mi = cmos(0x02), h = cmos(0x04);
    printf("rtc %02u%02u-%02u-%02u %02u:%02u:%02u\n", c, y, mo, d, h, mi, s);
    printf("ready\n");
    fflush(stdout);
    unsigned n = 0;
    char line[4] = {0};
    unsigned len = 0;
    for (;;) {
        while (!(inb(LSR) & LSR_DR))
            ;
        unsigned char b = inb(RBR);
        put(b);
        n++;
        if (b == '\n') {
            if (len == 3 && line[0] == 'b' && line[1] == 'y' && line[2] == 'e')
                break;
            len = 0;
        } else if (len < 3) {
            line[len++] = (char)b;
        } else {
            len = 4; /* longer than "bye" */
        }
    }
    printf("echoed %u\n", n);
    return 0;
}
