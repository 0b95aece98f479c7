# check.cmake -- the committed mq.c is fresh, compiles alone, exports mq_* only.
#
# Usage (the ctest `amalgamation_fresh` runs it):
#   cmake -DROOT=<repo> [-DWORK=<scratch dir>] [-DCC=<c compiler>] [-DNM=<nm>]
#         -P amalgamation/check.cmake
#
# Three promises of mq.c are checked, each with a message that says what to
# do about a failure:
#   1. Fresh: regenerating it from src/ into WORK gives exactly the committed
#      bytes.  mq.c is never rewritten by the build, so a change to src/ that
#      was not followed by `--target amalgamation` is caught here.
#   2. Standalone: the committed mq.c compiles with `cc -std=c11 -c mq.c` and
#      nothing but the repository root (for mq.h) on the include path -- what
#      a user who drops the two files into a project does.
#      It also compiles without a warning at -O2 under the house warning
#      flags: a compiler that sees all of mq.c inlines across modules and
#      can prove what it cannot in the modular build (a message cut short,
#      a variable read before it is set), and a user's -Werror must pass.
#   3. Clean namespace: the object defines no global symbol except mq_* ones,
#      none of them a POSIX <mqueue.h> name, and each of them declared in mq.h.
# The ordinary library build does not exercise any of these, because it
# compiles src/ (or mq.c with MQI_API defined empty).

cmake_minimum_required(VERSION 3.20)

if(NOT DEFINED ROOT)
  message(FATAL_ERROR "usage: cmake -DROOT=<repo> [-DWORK=<dir>] [-DCC=<cc>] [-DNM=<nm>] -P amalgamation/check.cmake")
endif()
get_filename_component(ROOT "${ROOT}" ABSOLUTE)
if(NOT DEFINED WORK OR WORK STREQUAL "")
  set(WORK "${ROOT}/build/amalgamation-check")
endif()
if(NOT DEFINED CC OR CC STREQUAL "")
  find_program(CC NAMES cc gcc clang REQUIRED)
endif()
if(NOT DEFINED NM OR NM STREQUAL "" OR NOT EXISTS "${NM}")
  find_program(NM NAMES nm llvm-nm REQUIRED)
endif()
file(MAKE_DIRECTORY "${WORK}")

set(committed "${ROOT}/mq.c")
if(NOT EXISTS "${committed}")
  message(FATAL_ERROR "mq.c is missing: generate it with `cmake --build build --target amalgamation` (or `cmake -DROOT=. -DOUT=mq.c -P amalgamation/amalgamate.cmake`) and commit it")
endif()

# 1. Freshness.
set(fresh "${WORK}/mq.c")
execute_process(
  COMMAND "${CMAKE_COMMAND}" -DROOT=${ROOT} -DOUT=${fresh}
          -P "${ROOT}/amalgamation/amalgamate.cmake"
  RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "amalgamate.cmake failed (${rc}): see the error above")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${committed}" "${fresh}"
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  find_program(DIFF diff)
  if(DIFF)
    execute_process(COMMAND "${DIFF}" -u "${committed}" "${fresh}"
                    OUTPUT_VARIABLE d ERROR_QUIET)
    string(LENGTH "${d}" n)
    if(n GREATER 4000)
      string(SUBSTRING "${d}" 0 4000 d)
      string(APPEND d "\n[... diff truncated ...]\n")
    endif()
    message("committed mq.c versus a fresh one (${fresh}):\n${d}")
  endif()
  message(FATAL_ERROR "mq.c is stale: run `cmake --build build --target amalgamation`")
endif()

# 2. Standalone compile of the committed file.
set(obj "${WORK}/mq-standalone.o")
file(REMOVE "${obj}")
execute_process(
  COMMAND "${CC}" -std=c11 -I "${ROOT}" -c "${committed}" -o "${obj}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message("${out}")
  message(FATAL_ERROR "mq.c does not compile alone with `${CC} -std=c11 -c mq.c`: a module needs a header or definition that only the CMake build provides")
endif()

# 2b. Warning-free as one unit, optimised.
execute_process(
  COMMAND "${CC}" -std=c11 -O2 -Wall -Wextra -Wshadow -Wstrict-prototypes
          -Wmissing-prototypes -Werror -I "${ROOT}" -c "${committed}" -o "${obj}.O2"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message("${out}")
  message(FATAL_ERROR "mq.c compiled alone with `${CC} -O2 -Wall -Wextra -Werror` warns: fix the source in src/ (the warning's mq.c line maps to it), then regenerate")
endif()

# 3. Exported names.
execute_process(COMMAND "${NM}" -g --defined-only "${obj}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE syms ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NM} failed on ${obj}: ${err}")
endif()
file(READ "${ROOT}/mq.h" header)
set(posix mq_open mq_close mq_send mq_receive mq_unlink mq_notify mq_getattr
          mq_setattr mq_timedsend mq_timedreceive)
string(REPLACE "\n" ";" lines "${syms}")
set(bad "")
set(count 0)
foreach(line IN LISTS lines)
  # "<address> <type> <name>"; the name is the last field.
  if(NOT line MATCHES "([^ \t]+)[ \t]*$")
    continue()
  endif()
  set(name "${CMAKE_MATCH_1}")
  math(EXPR count "${count} + 1")
  if(NOT name MATCHES "^mq_")
    list(APPEND bad "${name} (not an mq_* name: make it static or MQI_API)")
  elseif(name IN_LIST posix)
    list(APPEND bad "${name} (a POSIX <mqueue.h> name)")
  elseif(NOT header MATCHES "[^A-Za-z0-9_]${name}[ \t\n]*\\(")
    list(APPEND bad "${name} (not declared in mq.h)")
  endif()
endforeach()
if(bad)
  list(JOIN bad "\n  " text)
  message(FATAL_ERROR "mq.c defines global symbols it must not:\n  ${text}")
endif()
if(count EQUAL 0)
  message(FATAL_ERROR "mq.c defines no global symbol at all: the nm output was not understood:\n${syms}")
endif()
message(STATUS "mq.c is fresh, compiles alone and exports ${count} mq_* symbols")
