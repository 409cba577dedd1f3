"""LLVM intrinsics that Numba's Python-level builtins cannot express.

``fmin``/``fmax`` emit ``llvm.minnum``/``llvm.maxnum`` flagged ``nnan``: one
``vminps``/``vmaxps`` per vector. Numba's ``min(x, y)`` lowers to a compare and a
select, and in a sorting network LLVM then turns ``buf[a] = min(buf[a], buf[b])``
into a *masked* store (only the lanes that change are written), which is several
times slower than a plain store on x86. The ``nnan`` flag makes the result
undefined for NaN input: callers must pass finite values only (the robust rules
remove non-finite clients first).
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic


def _float_binary(llvm_name):
    def typer(typingctx, x, y):
        if not (isinstance(x, types.Float) and x == y):
            return None

        def codegen(context, builder, signature, args):
            lty = context.get_value_type(signature.return_type)
            sfx = "f32" if signature.return_type.bitwidth == 32 else "f64"
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(lty, [lty, lty]),
                                                f"{llvm_name}.{sfx}")
            return builder.call(fn, args, fastmath=("nnan", "nsz"))

        return x(x, y), codegen

    typer.__name__ = llvm_name.rsplit(".", 1)[-1]
    return intrinsic(typer)


fmin = _float_binary("llvm.minnum")
"""Minimum of two finite floats of the same type (``vminps``/``vminpd``)."""

fmax = _float_binary("llvm.maxnum")
"""Maximum of two finite floats of the same type (``vmaxps``/``vmaxpd``)."""



@intrinsic
def float_bits(typingctx, x):
    """The IEEE bits of a float as a signed integer of the same width (a bitcast).

    For non-negative x the integer orders like x itself: what radix selection needs.
    Taken from the value, not through an integer view of the array, so the compiler
    never sees two arrays that secretly alias.
    """
    if not isinstance(x, types.Float):
        return None
    ity = types.int32 if x.bitwidth == 32 else types.int64

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(ity))

    return ity(x), codegen


@intrinsic
def int_float(typingctx, x):
    """The float32 (int32 in) or float64 (int64 in) whose IEEE bits are ``x`` (a bitcast)."""
    if not isinstance(x, types.Integer) or x.bitwidth not in (32, 64):
        return None
    fty = types.float32 if x.bitwidth == 32 else types.float64

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(fty))

    return fty(x), codegen
