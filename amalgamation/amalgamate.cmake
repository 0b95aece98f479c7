# amalgamate.cmake -- generate the single-file library mq.c from src/.
#
# Usage:  cmake -DROOT=<repo> -DOUT=<file> -P amalgamation/amalgamate.cmake
# (also the `amalgamation` target: cmake --build build --target amalgamation)
#
# The files named in amalgamation/order.txt (blank lines and # comments are
# skipped) are concatenated, in that order, after a short prologue that
# defines _GNU_SOURCE, makes every internal MQI_API symbol static and
# includes mq.h.  An `#include "x.h"` of a file that order.txt lists is
# commented out, because that header's text is already inlined above it; any
# other include is kept, so a module that includes something unlisted fails
# to compile standalone, which check.cmake tests.
#
# Why it is shaped so: the output must be byte-identical on every run and on
# every machine (it is committed, and CI compares it), so nothing here
# depends on time, host, absolute paths or the order of a directory listing,
# and the file is only rewritten when its content changes.  It is written in
# CMake script so that generating it needs nothing beyond the build's own
# dependency.  No #line directives: diagnostics point into mq.c, and the
# begin/end markers name the source file.

cmake_minimum_required(VERSION 3.20)

if(NOT DEFINED ROOT OR NOT DEFINED OUT)
  message(FATAL_ERROR
    "usage: cmake -DROOT=<repo> -DOUT=<file> -P amalgamation/amalgamate.cmake")
endif()
get_filename_component(ROOT "${ROOT}" ABSOLUTE)

set(order_file "${ROOT}/amalgamation/order.txt")
if(NOT EXISTS "${order_file}")
  message(FATAL_ERROR "amalgamate: ${order_file} not found")
endif()

# Read order.txt line by line.  file(STRINGS) drops empty lines; comment
# lines and surrounding blanks are removed here.
file(STRINGS "${order_file}" order_lines)
set(files "")
foreach(line IN LISTS order_lines)
  string(STRIP "${line}" line)
  if(line STREQUAL "" OR line MATCHES "^#")
    continue()
  endif()
  if(NOT EXISTS "${ROOT}/${line}")
    message(FATAL_ERROR "amalgamate: ${line} (listed in order.txt) does not exist")
  endif()
  list(APPEND files "${line}")
endforeach()
if(NOT files)
  message(FATAL_ERROR "amalgamate: order.txt lists no files")
endif()

# The headers whose includes get commented out: every listed file, matched
# by its base name (with or without a directory in front of it).
set(inlined "")
foreach(f IN LISTS files)
  get_filename_component(base "${f}" NAME)
  list(APPEND inlined "${base}")
endforeach()
list(REMOVE_DUPLICATES inlined)

set(text [=[/*
** mq.c -- GENERATED FILE: DO NOT EDIT.
**
** This is the whole mq library in one C file (the "amalgamation").  It was
** generated from the modules in src/ by amalgamation/amalgamate.cmake, in
** the order given by amalgamation/order.txt.  Edit those sources instead and
** regenerate with:
**
**     cmake --build build --target amalgamation
**
** To use it, compile this file together with mq.h, for example
** `cc -std=c11 -c mq.c` and link with -lsqlite3 -lz -lpthread.  Internal
** functions are static here, so the only global symbols are the mq_* names
** of mq.h.
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

/* Internal functions are static in the amalgamation.  Builds that link
** internal unit tests against it define MQI_API to nothing. */
#ifndef MQI_API
#ifdef __GNUC__
#define MQI_API static __attribute__((unused))
#else
#define MQI_API static
#endif
#endif

#include "mq.h"
]=])

foreach(f IN LISTS files)
  file(READ "${ROOT}/${f}" body)
  # A leading newline lets one pattern match an include on the first line.
  set(body "\n${body}")
  foreach(base IN LISTS inlined)
    string(REPLACE "." "\\." base_re "${base}")
    string(REGEX REPLACE
      "\n[ \t]*#[ \t]*include[ \t]*\"([^\"\n]*/)?${base_re}\""
      "\n/* #include \"${base}\" -- inlined above */"
      body "${body}")
  endforeach()
  string(SUBSTRING "${body}" 1 -1 body)
  if(NOT body MATCHES "\n$")
    string(APPEND body "\n")
  endif()
  string(APPEND text "\n/*** begin ${f} ***/\n${body}/*** end ${f} ***/\n")
endforeach()

# Rewrite OUT only when its content changes, so an unchanged mq.c keeps its
# timestamp and nothing that depends on it rebuilds.
set(old "")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
  message(STATUS "amalgamate: wrote ${OUT}")
else()
  message(STATUS "amalgamate: ${OUT} is up to date")
endif()
