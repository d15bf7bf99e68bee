/* Reads a count n, then n integers; prints their sum and their maximum. */
#include <stdio.h>

int main(void) {
    long n, x, sum = 0, max = 0;
    if (scanf("%ld", &n) != 1 || n < 1) {
        fprintf(stderr, "expected a positive count\n");
        return 1;
    }
    for (long i = 0; i < n; i++) {
        if (scanf("%ld", &x) != 1) {
            fprintf(stderr, "expected %ld numbers, got %ld\n", n, i);
            return 1;
        }
        sum += x;
        if (i == 0 || x > max) max = x;
    }
    printf("%ld %ld\n", sum, max);
    return 0;
}
