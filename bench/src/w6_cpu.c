/* W6: a pure CPU loop of N iterations; no system calls inside the loop.
 *
 * The bench calibrates N once, natively, to about 0.5 s and then passes the
 * same N to every tool, so every tool does identical work.  A xorshift
 * chain is used because each step depends on the previous one: the compiler
 * can neither vectorise nor fold it, so time scales linearly with N.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    unsigned long long n = argc > 1 ? strtoull(argv[1], NULL, 10) : 100000000ULL;
    uint64_t x = 88172645463325252ULL, acc = 0;
    for (unsigned long long i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc += x;
    }
    printf("%llu iterations, checksum %016llx\n", n, (unsigned long long)acc);
    return 0;
}
