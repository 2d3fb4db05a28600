//! `Fx`, the function emitter every kernel is written with: a `FunctionBuilder` plus the kernel
//! ABI's entry values, and small helpers for f32x4 constants, fused multiply-adds, loads and
//! stores with the right memory flags, lane selects and counted loops.
//!
//! It knows nothing about ops or shapes; the `emit_*` functions in `kernels` and `matmul` do.
//! Everything here emits CLIF only, so the same code serves the JIT and the golden `.clif` dumps.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I32, I32X4, I64, I8X16};
use cranelift_codegen::ir::{
    AbiParam, BlockArg, ConstantData, ExtFuncData, ExternalName, FuncRef, InstBuilder,
    MemFlagsData, Signature, Type, UserExternalName, Value,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, Variable};

use crate::module::{GemmRequests, GEMM_NAMESPACE};
use crate::tier::Tier;
#[cfg(target_arch = "x86_64")]
use crate::x86::GemmShape;

/// The kernel ABI, shared by every generated function:
/// `extern "C" fn(table: *const *mut u8, rows: i64, row0: i64, key: i32, scalars: *const f32)`.
///
/// `table` holds the buffer pointers in the order the kernel's `emit_*` function documents;
/// `rows` is the number of examples in the batch (loop bound, at most the buffer capacity);
/// `row0` is the global index of the batch's first example (it only enters dropout element
/// numbers); `key` is the dropout key of the step; `scalars` are per-call f32 values such as the
/// optimizer's step-dependent coefficients.
pub fn kernel_signature(call_conv: CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    sig.params.push(AbiParam::new(I64));
    sig.params.push(AbiParam::new(I64));
    sig.params.push(AbiParam::new(I64));
    sig.params.push(AbiParam::new(I32));
    sig.params.push(AbiParam::new(I64));
    sig
}

/// The signature of the generated GEMMs (`x86::gemm`): three pointers, two counts and the bias.
pub fn gemm_signature(call_conv: CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    for _ in 0..6 {
        sig.params.push(AbiParam::new(I64));
    }
    sig
}

/// Loads of data the kernel never writes: they may move freely, which lets the e-graph keep each
/// load next to its use instead of pinning the program order of all loads before all FMAs.
pub fn ro() -> MemFlagsData {
    MemFlagsData::trusted().with_readonly().with_can_move()
}

/// Loads and stores of data the kernel also writes: program order is kept.
pub fn rw() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Byte loads of pixels and labels: no alignment promise beyond one byte.
pub fn bytes() -> MemFlagsData {
    MemFlagsData::new()
        .with_notrap()
        .with_readonly()
        .with_can_move()
}

pub struct Fx<'a> {
    pub b: FunctionBuilder<'a>,
    /// Emit `fma` (true when the ISA has AVX and FMA) or `fmul` + `fadd`.
    pub fma: bool,
    pub table: Value,
    pub rows: Value,
    pub row0: Value,
    pub key: Value,
    pub scalars: Value,
    frontend: TargetFrontendConfig,
    /// The full-width GEMMs this kernel may call (`None` at the `F32x4` tier).
    gemms: Option<&'a GemmRequests>,
    /// GEMMs imported into this function so far, by index in `gemms`.
    imported: Vec<(u32, FuncRef)>,
    /// Bit `i` set once pointer `i` of the table has been read (`arg`).
    pub slots_read: u64,
}

impl<'a> Fx<'a> {
    /// Creates the entry block and binds the ABI parameters.
    pub fn new(
        mut b: FunctionBuilder<'a>,
        fma: bool,
        frontend: TargetFrontendConfig,
        gemms: Option<&'a GemmRequests>,
    ) -> Self {
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        b.seal_block(entry);
        let p = b.block_params(entry).to_vec();
        Fx {
            b,
            fma,
            table: p[0],
            rows: p[1],
            row0: p[2],
            key: p[3],
            scalars: p[4],
            frontend,
            gemms,
            imported: Vec::new(),
            slots_read: 0,
        }
    }

    /// The vector tier of the matrix multiplies.
    pub fn tier(&self) -> Tier {
        self.gemms.map_or(Tier::F32x4, GemmRequests::tier)
    }

    /// Calls the full-width GEMM of `shape`: `c (+)= a · b` over `m` rows and depth `k`.
    #[cfg(target_arch = "x86_64")]
    pub fn call_gemm(&mut self, shape: GemmShape, [a, b, c, m, k, bias]: [Value; 6]) {
        let index = self
            .gemms
            .expect("GEMMs are called at a full-width tier only")
            .index(shape);
        let func = match self.imported.iter().find(|(i, _)| *i == index) {
            Some((_, f)) => *f,
            None => {
                let name = self
                    .b
                    .func
                    .declare_imported_user_function(UserExternalName::new(GEMM_NAMESPACE, index));
                let signature = self
                    .b
                    .import_signature(gemm_signature(self.frontend.default_call_conv));
                let f = self.b.import_function(ExtFuncData {
                    name: ExternalName::user(name),
                    signature,
                    colocated: false,
                    patchable: false,
                });
                self.imported.push((index, f));
                f
            }
        };
        self.b.ins().call(func, &[a, b, c, m, k, bias]);
    }

    /// Ends the function with `return` and checks that every block was filled and sealed.
    pub fn finish(mut self) {
        self.b.ins().return_(&[]);
        self.b.seal_all_blocks();
        self.b.finalize(self.frontend);
    }

    /// Pointer number `slot` of the argument table.
    pub fn arg(&mut self, slot: usize) -> Value {
        self.slots_read |= 1u64.checked_shl(slot as u32).unwrap_or(0);
        let off = i32::try_from(slot * 8).expect("argument table fits in i32 offsets");
        self.b.ins().load(I64, ro(), self.table, off)
    }

    /// Per-call scalar number `index`.
    pub fn scalar(&mut self, index: usize) -> Value {
        let off = i32::try_from(index * 4).expect("scalar table fits in i32 offsets");
        self.b.ins().load(F32, ro(), self.scalars, off)
    }

    pub fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }

    pub fn fconst(&mut self, v: f32) -> Value {
        self.b.ins().f32const(v)
    }

    /// `v` in all four lanes.
    pub fn splat(&mut self, v: f32) -> Value {
        self.const_f4([v; 4])
    }

    pub fn splat_i(&mut self, v: i32) -> Value {
        let s = self.b.ins().iconst(I32, i64::from(v));
        self.b.ins().splat(I32X4, s)
    }

    /// An i32x4 constant with the given lanes.
    pub fn const_i4(&mut self, lanes: [i32; 4]) -> Value {
        let bytes: Vec<u8> = lanes.iter().flat_map(|l| l.to_le_bytes()).collect();
        let c = self.b.func.dfg.constants.insert(ConstantData::from(bytes));
        self.b.ins().vconst(I32X4, c)
    }

    /// An f32x4 constant with the given lanes.
    pub fn const_f4(&mut self, lanes: [f32; 4]) -> Value {
        let bytes: Vec<u8> = lanes.iter().flat_map(|l| l.to_le_bytes()).collect();
        let c = self.b.func.dfg.constants.insert(ConstantData::from(bytes));
        self.b.ins().vconst(F32X4, c)
    }

    pub fn zero4(&mut self) -> Value {
        self.splat(0.0)
    }

    /// `a * b + c`, fused when the ISA has FMA; otherwise two roundings (never a libcall).
    pub fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let p = self.b.ins().fmul(a, b);
            self.b.ins().fadd(p, c)
        }
    }

    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fadd(a, b)
    }

    pub fn sub(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fsub(a, b)
    }

    pub fn mul(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fmul(a, b)
    }

    pub fn div(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fdiv(a, b)
    }

    pub fn mulc(&mut self, a: Value, c: f32) -> Value {
        let k = self.splat(c);
        self.b.ins().fmul(a, k)
    }

    pub fn addc(&mut self, a: Value, c: f32) -> Value {
        let k = self.splat(c);
        self.b.ins().fadd(a, k)
    }

    /// Lane-wise `if mask { a } else { b }` for an i32x4 comparison mask.
    pub fn select(&mut self, mask: Value, a: Value, b: Value) -> Value {
        let m = self.b.ins().bitcast(F32X4, MemFlagsData::new(), mask);
        self.b.ins().bitselect(m, a, b)
    }

    /// Lane-wise comparison of f32x4 values, as an i32x4 mask.
    pub fn cmp(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        self.b.ins().fcmp(cc, a, b)
    }

    /// `a < b ? a : b` in the exact shape x64 lowers to `minps`.
    pub fn min(&mut self, a: Value, b: Value) -> Value {
        let lt = self.b.ins().fcmp(FloatCC::LessThan, a, b);
        let m = self.b.ins().bitcast(F32X4, MemFlagsData::new(), lt);
        self.b.ins().bitselect(m, a, b)
    }

    /// `b < a ? a : b` in the exact shape x64 lowers to `maxps`.
    pub fn max(&mut self, a: Value, b: Value) -> Value {
        let lt = self.b.ins().fcmp(FloatCC::LessThan, b, a);
        let m = self.b.ins().bitcast(F32X4, MemFlagsData::new(), lt);
        self.b.ins().bitselect(m, a, b)
    }

    pub fn load4(&mut self, flags: MemFlagsData, p: Value, off: i64) -> Value {
        self.b.ins().load(F32X4, flags, p, imm(off * 4))
    }

    pub fn load1(&mut self, flags: MemFlagsData, p: Value, off: i64) -> Value {
        self.b.ins().load(F32, flags, p, imm(off * 4))
    }

    /// Loads one f32 and broadcasts it to all lanes.
    pub fn bcast(&mut self, flags: MemFlagsData, p: Value, off: i64) -> Value {
        let s = self.b.ins().load(F32, flags, p, imm(off * 4));
        self.b.ins().splat(F32X4, s)
    }

    pub fn store(&mut self, v: Value, p: Value, off: i64) {
        self.b.ins().store(rw(), v, p, imm(off * 4));
    }

    /// Loads byte `off` after `p` and widens it to i32.
    pub fn load_u8(&mut self, p: Value, off: i64) -> Value {
        self.b.ins().uload8(I32, bytes(), p, imm(off))
    }

    /// `p + index * scale` bytes.
    pub fn offset(&mut self, p: Value, index: Value, scale: i64) -> Value {
        let o = self.b.ins().imul_imm_s(index, scale);
        self.b.ins().iadd(p, o)
    }

    pub fn add_imm(&mut self, p: Value, bytes: i64) -> Value {
        self.b.ins().iadd_imm_s(p, bytes)
    }

    pub fn var(&mut self, ty: Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    pub fn get(&mut self, v: Variable) -> Value {
        self.b.use_var(v)
    }

    pub fn set(&mut self, v: Variable, x: Value) {
        self.b.def_var(v, x);
    }

    /// The f32x4 whose lane `k` is lane `lanes[k]` of the eight lanes of `a` then `b`.
    pub fn shuffle4(&mut self, a: Value, b: Value, lanes: [u8; 4]) -> Value {
        let bytes: Vec<u8> = lanes
            .iter()
            .flat_map(|l| (0..4).map(move |i| 4 * l + i))
            .collect();
        let mask = self.b.func.dfg.immediates.push(ConstantData::from(bytes));
        let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        let a = self.b.ins().bitcast(I8X16, le, a);
        let b = self.b.ins().bitcast(I8X16, le, b);
        let s = self.b.ins().shuffle(a, b, mask);
        self.b.ins().bitcast(F32X4, le, s)
    }

    /// Transposes the 4×4 block whose rows are `r`: returns its columns.
    pub fn transpose4(&mut self, r: [Value; 4]) -> [Value; 4] {
        let t0 = self.shuffle4(r[0], r[1], [0, 4, 1, 5]);
        let t1 = self.shuffle4(r[0], r[1], [2, 6, 3, 7]);
        let t2 = self.shuffle4(r[2], r[3], [0, 4, 1, 5]);
        let t3 = self.shuffle4(r[2], r[3], [2, 6, 3, 7]);
        [
            self.shuffle4(t0, t2, [0, 1, 4, 5]),
            self.shuffle4(t0, t2, [2, 3, 6, 7]),
            self.shuffle4(t1, t3, [0, 1, 4, 5]),
            self.shuffle4(t1, t3, [2, 3, 6, 7]),
        ]
    }

    /// Horizontal sum of the four lanes.
    pub fn hsum(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4u8).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fadd(l[0], l[1]);
        let c = self.b.ins().fadd(l[2], l[3]);
        self.b.ins().fadd(a, c)
    }

    /// Runs `body(i)` for `i = start, start + step, ...` while `i + step <= limit` and returns
    /// the first `i` that was not run (the start of a remainder). Counters are i64.
    pub fn loop_up(
        &mut self,
        start: Value,
        limit: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, Value),
    ) -> Value {
        let header = self.b.create_block();
        let inner = self.b.create_block();
        let exit = self.b.create_block();
        let i = self.b.append_block_param(header, I64);
        let done = self.b.append_block_param(exit, I64);
        self.b.ins().jump(header, &[BlockArg::Value(start)]);

        self.b.switch_to_block(header);
        let next = self.b.ins().iadd_imm_s(i, step);
        let more = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, next, limit);
        self.b
            .ins()
            .brif(more, inner, &[], exit, &[BlockArg::Value(i)]);

        self.b.switch_to_block(inner);
        self.b.seal_block(inner);
        body(self, i);
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.ins().jump(header, &[BlockArg::Value(next)]);
        self.b.seal_block(header);

        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
        done
    }

    /// Runs `then` where `cond` is non-zero and `otherwise` where it is zero, and goes on after
    /// both.
    pub fn if_else(
        &mut self,
        cond: Value,
        then: impl FnOnce(&mut Self),
        otherwise: impl FnOnce(&mut Self),
    ) {
        let yes = self.b.create_block();
        let no = self.b.create_block();
        let join = self.b.create_block();
        self.b.ins().brif(cond, yes, &[], no, &[]);
        for (block, body) in [
            (yes, Box::new(then) as Box<dyn FnOnce(&mut Self)>),
            (no, Box::new(otherwise)),
        ] {
            self.b.switch_to_block(block);
            self.b.seal_block(block);
            body(self);
            self.b.ins().jump(join, &[]);
        }
        self.b.switch_to_block(join);
        self.b.seal_block(join);
    }

    /// `loop_up` from constant bounds.
    pub fn loop_const(
        &mut self,
        start: i64,
        limit: i64,
        step: i64,
        body: impl FnMut(&mut Self, Value),
    ) -> Value {
        let s = self.iconst(start);
        let l = self.iconst(limit);
        self.loop_up(s, l, step, body)
    }

    /// The row count as f32 (for means over the batch).
    pub fn rows_f32(&mut self) -> Value {
        self.b.ins().fcvt_from_sint(F32, self.rows)
    }

    /// Scalar `row0 + row`, truncated to i32 (dropout element numbers wrap as u32 does).
    pub fn global_row_i32(&mut self, row: Value) -> Value {
        let r = self.b.ins().iadd(self.row0, row);
        self.b.ins().ireduce(I32, r)
    }
}

/// A byte offset as a load/store immediate.
fn imm(bytes: i64) -> i32 {
    i32::try_from(bytes).expect("buffer offsets fit in 32 bits")
}
