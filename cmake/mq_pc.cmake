# mq_pc.cmake -- write and install mq.pc, at install time.
#
# Included by the install script (cmake_install.cmake) with MQ_PC_TEMPLATE,
# MQ_PC_WORK, MQ_PC_VERSION, MQ_PC_LIBDIR, MQ_PC_INCLUDEDIR, MQ_PC_REQUIRES
# and MQ_PC_LIBS_PRIVATE set by the install(CODE) rule in CMakeLists.txt.
#
# Why at install time: pkg-config needs absolute paths in mq.pc, and the
# prefix is only known for certain when installing -- `cmake --install BUILD
# --prefix P` overrides the configured CMAKE_INSTALL_PREFIX, and here
# CMAKE_INSTALL_PREFIX is the one in effect.  file(INSTALL) then honours
# DESTDIR and records mq.pc in install_manifest.txt like every other file.
# The file lands in <libdir>/pkgconfig, next to the libraries it describes.

foreach(dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${MQ_PC_${dir}}")
    set(MQ_PC_${dir}_FULL "${MQ_PC_${dir}}")
  else()
    set(MQ_PC_${dir}_FULL "\${prefix}/${MQ_PC_${dir}}")
  endif()
endforeach()
set(MQ_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
configure_file("${MQ_PC_TEMPLATE}" "${MQ_PC_WORK}/mq.pc" @ONLY)
if(IS_ABSOLUTE "${MQ_PC_LIBDIR}")
  set(mq_pc_dest "${MQ_PC_LIBDIR}/pkgconfig")
else()
  set(mq_pc_dest "${CMAKE_INSTALL_PREFIX}/${MQ_PC_LIBDIR}/pkgconfig")
endif()
file(INSTALL DESTINATION "${mq_pc_dest}" TYPE FILE FILES "${MQ_PC_WORK}/mq.pc")
