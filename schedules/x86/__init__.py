"""x86-specific rules: those that use an instruction only some x86 CPUs have."""
