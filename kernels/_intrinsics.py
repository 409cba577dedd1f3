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


@intrinsic
def prefetch(typingctx, arr, i):
    """Hint the CPU to bring the cache line holding ``arr[i]`` (a 1-D array) into cache
    (``llvm.prefetch``, read, high locality): the SGD loop asks for the next mini-batch's
    rows while it computes on this one, so a shuffled epoch's random row reads overlap
    with work instead of stalling it. A hint only: no fault, no effect on any value."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]],
                                       wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, i), codegen


@intrinsic
def address_as_pointer(typingctx, address, like):
    """The integer ``address`` as a pointer to values of ``like``'s float type, for
    ``numba.carray``: how one kernel call reads K client arrays that live in K separate
    buffers (a Flower reply's bytes) without stacking them first.

    The caller owns the promise: every address points at a live, aligned buffer of at
    least the length the kernel reads (the API checks each buffer's size, and keeps the
    buffers referenced for the whole call)."""
    if not (isinstance(address, types.Integer) and isinstance(like, types.Float)):
        return None
    ptrty = types.CPointer(like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptrty))

    return ptrty(address, like), codegen
