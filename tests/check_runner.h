/* check_runner.h - the main() every Check binary shares
 * SPDX-License-Identifier: MIT
 */
#ifndef CIBAD_CHECK_RUNNER_H
#define CIBAD_CHECK_RUNNER_H

#include <check.h>
#include <stdlib.h>

/* Defines main() running one suite in fork mode (a crash fails one test, not the run)
 * and exiting non-zero when any test failed. */
#define CHECK_MAIN(suite_fn)                                                             \
    int main(void)                                                                       \
    {                                                                                    \
        SRunner *runner = srunner_create(suite_fn());                                    \
        int failed;                                                                      \
                                                                                         \
        srunner_run_all(runner, CK_ENV);                                                 \
        failed = srunner_ntests_failed(runner);                                          \
        srunner_free(runner);                                                            \
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;                                \
    }

#endif
