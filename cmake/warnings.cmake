# Per-target warnings. PREFCAL_WERROR turns them into errors (CI sets it); PREFCAL_SANITIZE=address,undefined
# builds the CPU module with sanitizers (run the CPU tests with LD_PRELOAD of the ASan runtime).
option(PREFCAL_WERROR "Treat compiler warnings as errors" OFF)
set(PREFCAL_SANITIZE "" CACHE STRING "Comma-separated sanitizers for the CPU module, e.g. address,undefined")

function(prefcal_warnings target)
  if(MSVC)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:/W4>)
    if(PREFCAL_WERROR)
      target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:/WX>)
    endif()
  else()
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wshadow -Wconversion -Wno-sign-conversion>)
    if(PREFCAL_WERROR)
      target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
    endif()
  endif()
  if(CMAKE_CUDA_COMPILER)
    # Host-side warnings of nvcc-compiled code go through -Xcompiler; device-side warnings are on by default.
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
    if(PREFCAL_WERROR)
      target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>)
    endif()
  endif()
endfunction()

function(prefcal_sanitize target)
  if(PREFCAL_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${PREFCAL_SANITIZE} -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=${PREFCAL_SANITIZE})
  endif()
endfunction()
