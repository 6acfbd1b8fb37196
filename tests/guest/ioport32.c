/* Guest for tests/kernel/test_ioport.py, built with gcc -m32: port I/O of a
 * 32-bit thread (i386 ioperm, 32-bit addresses and counts).  Prints the
 * eax of an inb at 0xe0 (eax was 0x11223344) and what a rep insw of three
 * words at 0xe4 did. */
#include <stdio.h>
#include <string.h>
#include <sys/io.h>

int main(void)
{
	if (ioperm(0xe0, 8, 1)) {
		perror("ioperm");
		return 3;
	}
	unsigned int a = 0x11223344;
	unsigned short dx = 0xe4;
	__asm__ volatile("inb $0xe0, %%al" : "+a"(a));
	unsigned char buf[8], *di = buf;
	unsigned int c = 3;
	memset(buf, 0xaa, sizeof buf);
	__asm__ volatile("rep insw" : "+D"(di), "+c"(c) : "d"(dx) : "memory");
	printf("inb=%#x insw moved=%d rcx=%u buf=", a, (int)(di - buf), c);
	for (size_t i = 0; i < sizeof buf; i++)
		printf("%02x", buf[i]);
	printf("\n");
	return 0;
}
