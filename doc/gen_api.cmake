# gen_api.cmake -- generate doc/api.md, the API reference, from mq.h.
#
# Usage:
#   cmake -DHEADER=mq.h -DOUT=doc/api.md -P doc/gen_api.cmake
#       (also the target doc_api: cmake --build build --target doc_api)
#   cmake -DHEADER=mq.h -DOUT=<scratch>/api.md -DCHECK=doc/api.md -P doc/gen_api.cmake
#       (the ctest api_doc_fresh: generate into OUT, fail if CHECK differs)
#
# mq.h is the reference (its comments say who owns what, what fails and
# which threads may call); api.md only presents the same text as Markdown,
# so the two can never disagree as long as api.md is regenerated -- which
# api_doc_fresh enforces, as amalgamation_fresh does for mq.c.
#
# How the header is read (the shapes mq.h uses; STYLE.md asks for them):
#   - The first comment of the file is the overview, shown before the
#     contents.
#   - A banner comment, whose first line is "/* -----", opens a section: its
#     next line is the title, the rest of it is the section's introduction.
#     Items before the first banner go under "Version", which is what mq.h
#     keeps there.
#   - An item is a comment at column 0 followed by the declarations under it
#     (up to a blank line or the next column-0 comment), or declarations
#     alone.  It becomes a "###" heading naming what is declared (all the
#     names, or "first to last" when there are more than three), the
#     declarations in a ```c block exactly as in the header except for the
#     MQ_API visibility macro, and the comment as text.  A comment with no
#     declaration under it stays as text.  Comments after a declaration
#     (struct fields, codes) are part of the declaration.
#   - Include guards, #include, the MQ_API definition and extern "C" are
#     plumbing and are skipped.
# In the text, '*', '<' and a '_' that starts a word are escaped so that
# Markdown shows them as written ("MQ_E* codes", "<mqueue.h>").
#
# Why CMake script: like amalgamation/amalgamate.cmake it needs nothing but
# the build's own tool, and the output depends only on the header's bytes,
# so it is identical on every machine.  CMake lists split on ';' and treat
# '[' ']' and '\' specially, so those characters are swapped for control
# characters while lines are handled as list elements and restored at the
# end.  CMake's REGEX REPLACE replaces every match and lets '^' match again
# where the previous match ended, so a prefix is removed with "^x(.*)$".

cmake_minimum_required(VERSION 3.20)

if(NOT DEFINED HEADER OR NOT DEFINED OUT)
  message(FATAL_ERROR "usage: cmake -DHEADER=mq.h -DOUT=api.md [-DCHECK=doc/api.md] -P doc/gen_api.cmake")
endif()
if(NOT EXISTS "${HEADER}")
  message(FATAL_ERROR "gen_api: ${HEADER} not found")
endif()

string(ASCII 1 G_SEMI)
string(ASCII 2 G_LBR)
string(ASCII 3 G_RBR)
string(ASCII 4 G_BSL)

file(READ "${HEADER}" text)
string(REPLACE "\\" "${G_BSL}" text "${text}")
string(REPLACE ";" "${G_SEMI}" text "${text}")
string(REPLACE "[" "${G_LBR}" text "${text}")
string(REPLACE "]" "${G_RBR}" text "${text}")
string(REPLACE "\r" "" text "${text}")
string(REPLACE "\n" ";" lines "${text}")

# ---- helpers ---------------------------------------------------------------

# Turn the lines of one comment (a list, with its /* and */) into Markdown
# text lines joined by newlines.  SKIP_FIRST drops the first text line (a
# banner's title).
function(g_comment_text out)
  cmake_parse_arguments(A "SKIP_FIRST" "" "LINES" ${ARGN})
  list(LENGTH A_LINES n)
  math(EXPR last "${n} - 1")
  set(res "")
  set(idx 0)
  set(in_list 0)
  set(seen_text 0)
  set(pending_blank 0)
  foreach(l IN LISTS A_LINES)
    if(idx EQUAL 0)
      string(REGEX REPLACE "^/\\*+" "" l "${l}")
      string(REGEX REPLACE "^ *-+ *$" "" l "${l}") # banner rule
    else()
      string(REGEX REPLACE "^(\\*\\*| \\*)(.*)$" "\\2" l "${l}")
    endif()
    if(idx EQUAL last)
      string(REGEX REPLACE "\\*+/[ \t]*$" "" l "${l}")
    endif()
    math(EXPR idx "${idx} + 1")
    string(REGEX REPLACE "^ (.*)$" "\\1" l "${l}")
    string(REGEX REPLACE "[ \t]+$" "" l "${l}")
    if(l STREQUAL "")
      if(seen_text)
        set(pending_blank 1)
      endif()
      set(in_list 0)
      continue()
    endif()
    if(A_SKIP_FIRST AND NOT seen_text)
      set(A_SKIP_FIRST 0)
      continue()
    endif()
    # A list item ("- ...", any indentation) opens a list; an unindented
    # line after it ends the list, which Markdown needs a blank line for.
    if(l MATCHES "^ *- ")
      set(in_list 1)
    elseif(in_list AND NOT l MATCHES "^ ")
      set(pending_blank 1)
      set(in_list 0)
    endif()
    string(REPLACE "*" "\\*" l "${l}")
    string(REPLACE "<" "\\<" l "${l}")
    string(REGEX REPLACE "(^|[^A-Za-z0-9_])_" "\\1\\\\_" l "${l}")
    if(pending_blank)
      string(APPEND res "\n")
      set(pending_blank 0)
    endif()
    string(APPEND res "${l}\n")
    set(seen_text 1)
  endforeach()
  set(${out} "${res}" PARENT_SCOPE)
endfunction()

# GitHub's anchor for a heading: lower case, punctuation dropped, each space
# a hyphen; a repeated anchor gets -1, -2, ...  G_ANCHORS holds those used.
function(g_anchor title out)
  string(TOLOWER "${title}" a)
  string(REGEX REPLACE "[^a-z0-9 _-]" "" a "${a}")
  string(REPLACE " " "-" a "${a}")
  set(base "${a}")
  set(k 0)
  while(a IN_LIST G_ANCHORS)
    math(EXPR k "${k} + 1")
    set(a "${base}-${k}")
  endwhile()
  set(G_ANCHORS ${G_ANCHORS} "${a}" PARENT_SCOPE)
  set(${out} "${a}" PARENT_SCOPE)
endfunction()

# ---- state -----------------------------------------------------------------
# G_BODY: the sections as Markdown.  G_TOC: the contents list.  The current
# item is its comment lines (G_CMT, empty if none) and declaration lines
# (G_DECL) with the names they declare (G_NAMES).
set(G_BODY "")
set(G_TOC "")
set(G_TOC_LINE "")
set(G_INTRO "")
set(G_ANCHORS "")
set(G_HAVE_SECTION 0)
set(G_SEEN_CODE 0)
set(G_CMT "")
set(G_DECL "")
set(G_NAMES "")

# Open a section titled g_title with the introduction g_intro (may be "").
macro(g_open_section)
  if(G_TOC_LINE)
    string(APPEND G_TOC "${G_TOC_LINE}\n")
  endif()
  g_anchor("${g_title}" g_sa)
  set(G_TOC_LINE "- [${g_title}](#${g_sa})")
  set(g_sep ": ")
  string(APPEND G_BODY "\n## ${g_title}\n")
  if(NOT g_intro STREQUAL "")
    string(APPEND G_BODY "\n${g_intro}")
  endif()
  set(G_HAVE_SECTION 1)
endmacro()

# Emit the current item (if any) and start a new one.
macro(g_flush)
  if(G_DECL OR G_CMT)
    if(NOT G_HAVE_SECTION)
      set(g_title "Version")
      set(g_intro "")
      g_open_section()
    endif()
    set(g_text "")
    if(G_CMT)
      g_comment_text(g_text LINES ${G_CMT})
    endif()
    if(G_DECL)
      list(LENGTH G_NAMES g_n)
      if(g_n EQUAL 0)
        set(g_title "Declarations")
      elseif(g_n GREATER 3)
        list(GET G_NAMES 0 g_first)
        list(GET G_NAMES -1 g_last)
        set(g_title "${g_first} to ${g_last}")
      else()
        list(JOIN G_NAMES ", " g_title)
      endif()
      g_anchor("${g_title}" g_ia)
      string(APPEND G_TOC_LINE "${g_sep}[${g_title}](#${g_ia})")
      set(g_sep ", ")
      list(JOIN G_DECL "\n" g_code)
      string(APPEND G_BODY "\n### ${g_title}\n\n```c\n${g_code}\n```\n")
      if(NOT g_text STREQUAL "")
        string(APPEND G_BODY "\n${g_text}")
      endif()
    elseif(NOT g_text STREQUAL "")
      string(APPEND G_BODY "\n${g_text}")
    endif()
  endif()
  set(G_CMT "")
  set(G_DECL "")
  set(G_NAMES "")
endmacro()

# A finished column-0 comment: the overview, a banner, or an item's comment.
macro(g_comment_done)
  list(GET G_RAW 0 g_first_line)
  if(NOT G_SEEN_CODE AND G_INTRO STREQUAL "" AND NOT G_HAVE_SECTION)
    g_comment_text(G_INTRO LINES ${G_RAW})
  elseif(g_first_line MATCHES "^/\\* *-----")
    g_flush()
    list(GET G_RAW 1 g_title)
    string(REGEX REPLACE "^(\\*\\*| \\*) *" "" g_title "${g_title}")
    string(REGEX REPLACE "[ .]+$" "" g_title "${g_title}")
    g_comment_text(g_intro SKIP_FIRST LINES ${G_RAW})
    g_open_section()
  else()
    if(G_DECL OR G_CMT)
      g_flush()
    endif()
    set(G_CMT ${G_RAW})
  endif()
endmacro()

# ---- the walk over the header's lines -------------------------------------
set(in_comment 0)      # inside a column-0 comment
set(in_decl_comment 0) # inside a comment that follows code
set(strip_api 0)       # the current statement began with "MQ_API "
foreach(line IN LISTS lines)
  if(in_comment)
    list(APPEND G_RAW "${line}")
    if(line MATCHES "\\*/")
      set(in_comment 0)
      g_comment_done()
    endif()
    continue()
  endif()
  if(in_decl_comment)
    if(strip_api)
      string(REGEX REPLACE "^       (.*)$" "\\1" line "${line}")
    endif()
    list(APPEND G_DECL "${line}")
    if(line MATCHES "\\*/")
      set(in_decl_comment 0)
    endif()
    continue()
  endif()
  if(line MATCHES "^[ \t]*$")
    g_flush()
    continue()
  endif()
  if(line MATCHES "^/\\*")
    set(G_RAW "${line}")
    if(line MATCHES "^/\\*.*\\*/")
      g_comment_done()
    else()
      set(in_comment 1)
    endif()
    continue()
  endif()
  # Plumbing, not API.
  if(line MATCHES "^#[ \t]*(if|ifdef|ifndef|else|elif|endif|include)( |$)"
     OR line MATCHES "^#define (MQ_H|MQ_API)( |$)"
     OR line MATCHES "^extern \"C\"" OR line MATCHES "^}[ \t]*$")
    continue()
  endif()
  set(G_SEEN_CODE 1)
  # A statement starts at column 0; its continuation lines are indented.
  if(NOT line MATCHES "^[ \t}]")
    set(strip_api 0)
    if(line MATCHES "^MQ_API ")
      set(strip_api 1)
      string(REGEX REPLACE "^MQ_API " "" line "${line}")
    endif()
    if(line MATCHES "^#define ([A-Za-z0-9_]+)")
      list(APPEND G_NAMES "${CMAKE_MATCH_1}")
    elseif(line MATCHES "^typedef struct ([A-Za-z0-9_]+)")
      list(APPEND G_NAMES "${CMAKE_MATCH_1}")
    elseif(line MATCHES "^typedef [^(]*\\(\\*([A-Za-z0-9_]+)\\)")
      list(APPEND G_NAMES "${CMAKE_MATCH_1}")
    elseif(strip_api AND line MATCHES "([A-Za-z0-9_]+)\\(")
      list(APPEND G_NAMES "${CMAKE_MATCH_1}")
    endif()
  elseif(strip_api AND line MATCHES "^ ")
    string(REGEX REPLACE "^       (.*)$" "\\1" line "${line}")
  endif()
  list(APPEND G_DECL "${line}")
  # A comment opened after the code and not closed on this line goes on.
  string(REGEX REPLACE "/\\*([^*]|\\*[^/])*\\*/" "" closed "${line}")
  if(closed MATCHES "/\\*")
    set(in_decl_comment 1)
  endif()
endforeach()
g_flush()
if(G_TOC_LINE)
  string(APPEND G_TOC "${G_TOC_LINE}\n")
endif()

get_filename_component(hname "${HEADER}" NAME)
set(doc "# mq API reference\n\n")
string(APPEND doc "<!-- GENERATED from ${hname} by doc/gen_api.cmake: do not edit. -->\n")
string(APPEND doc "<!-- Regenerate: cmake --build build --target doc_api -->\n\n")
string(APPEND doc "This is [`${hname}`](../${hname}) presented as Markdown: every comment "
  "and declaration of the header, in its order. The header is the reference; this "
  "file is regenerated from it (the test `api_doc_fresh` fails when it is stale). "
  "`MQ_API`, the symbol-visibility macro in front of every function, is left out.\n\n")
string(APPEND doc "${G_INTRO}\n## Contents\n\n${G_TOC}${G_BODY}")

string(REPLACE "${G_SEMI}" ";" doc "${doc}")
string(REPLACE "${G_LBR}" "[" doc "${doc}")
string(REPLACE "${G_RBR}" "]" doc "${doc}")
string(REPLACE "${G_BSL}" "\\" doc "${doc}")

# Rewrite OUT only when its content changes (like amalgamate.cmake).
set(old "")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL doc)
  file(WRITE "${OUT}" "${doc}")
endif()

if(DEFINED CHECK AND NOT CHECK STREQUAL "")
  set(committed "")
  if(EXISTS "${CHECK}")
    file(READ "${CHECK}" committed)
  endif()
  if(NOT committed STREQUAL doc)
    find_program(DIFF diff)
    if(DIFF AND EXISTS "${CHECK}")
      execute_process(COMMAND "${DIFF}" -u "${CHECK}" "${OUT}" OUTPUT_VARIABLE d ERROR_QUIET)
      string(LENGTH "${d}" n)
      if(n GREATER 4000)
        string(SUBSTRING "${d}" 0 4000 d)
        string(APPEND d "\n[... diff truncated ...]\n")
      endif()
      message("${CHECK} versus a fresh one (${OUT}):\n${d}")
    endif()
    message(FATAL_ERROR "doc/api.md is stale: run `cmake --build build --target doc_api` "
      "(or `cmake -DHEADER=mq.h -DOUT=doc/api.md -P doc/gen_api.cmake`) and commit it")
  endif()
  message(STATUS "doc/api.md is fresh")
endif()
