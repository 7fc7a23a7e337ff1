// The CUDA emulation's fiber switch on x86-64 (declared in cuda_emulation.h): pushes the
// callee-saved registers, MXCSR and the x87 control word on the current stack, stores the stack
// pointer in *from (rdi), loads `to` (rsi) and pops the same from there. Everything else is
// caller-saved under the System V ABI, so the compiler has already saved it around the call.
#if defined(__x86_64__)
asm(R"(
  .text
  .globl anm_emu_switch
  .hidden anm_emu_switch
  .type anm_emu_switch, @function
anm_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size anm_emu_switch, .-anm_emu_switch
)");
#endif
