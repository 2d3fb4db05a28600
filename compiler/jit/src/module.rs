//! `KernelModule`, the one owner of the JIT module and the Cranelift contexts: it builds the ISA
//! (the host's for running, a fixed x86-64 one for golden CLIF), deduplicates kernels by spec,
//! emits and defines them, finalizes, and holds the only `unsafe` conversion from a finalized
//! code pointer to a callable `KernelFn`. Dropping it frees the generated code.
//!
//! Kernels asked for by spec (`kernel`) get their id at once and are compiled together by
//! `finalize`, on one thread per core: each is a function of its own (no calls, no data but its
//! constant pool), so the compilations are independent, and the code they produce does not
//! depend on which thread compiled it.

use std::collections::HashMap;

use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::{Function, UserFuncName};
use cranelift_codegen::isa::{self, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{verify_function, Context};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module, ModuleReloc};

use super::emit::{kernel_signature, Fx};
use super::kernels::Kernel;
use netc_ir::backend::BackendError;
use netc_ir::cores::map_on_cores;

/// A generated kernel, callable with the ABI described at `emit::kernel_signature`.
pub type KernelFn = unsafe extern "C" fn(*const *mut u8, i64, i64, i32, *const f32);

/// Index of a kernel in its `KernelModule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelId(pub usize);

fn shared_flags(opt_level: &str) -> Result<settings::Builder, BackendError> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v).map_err(|e| BackendError::Isa {
            setting: k.to_owned(),
            detail: e.to_string(),
        })
    };
    set(&mut flags, "opt_level", opt_level)?;
    // The verifier catches malformed CLIF at once in tests and debug builds; release builds
    // trust the emitters (their output is covered by the tests).
    set(
        &mut flags,
        "enable_verifier",
        if cfg!(debug_assertions) {
            "true"
        } else {
            "false"
        },
    )?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    Ok(flags)
}

/// The host ISA, with every extension `cranelift_native` detects, at `opt_level` "speed" or
/// "none" (see `Kernel::in_program_order`).
fn host_isa(opt_level: &str) -> Result<OwnedTargetIsa, BackendError> {
    let flags = shared_flags(opt_level)?;
    let host = |e: &dyn std::fmt::Display| BackendError::Host {
        what: "detecting the CPU".to_owned(),
        detail: e.to_string(),
    };
    let builder = cranelift_native::builder().map_err(|e| host(&e))?;
    builder
        .finish(settings::Flags::new(flags))
        .map_err(|e| host(&e))
}

/// The fixed ISA of the golden CLIF files: x86-64 with SSE4.1, AVX and FMA, whatever the host.
pub fn fixed_isa() -> Result<OwnedTargetIsa, BackendError> {
    let flags = shared_flags("speed")?;
    let mut builder = isa::lookup_by_name("x86_64").map_err(|e| BackendError::Isa {
        setting: "x86_64".to_owned(),
        detail: e.to_string(),
    })?;
    for ext in [
        "has_sse3",
        "has_ssse3",
        "has_sse41",
        "has_sse42",
        "has_avx",
        "has_fma",
    ] {
        builder.set(ext, "true").map_err(|e| BackendError::Isa {
            setting: ext.to_owned(),
            detail: e.to_string(),
        })?;
    }
    builder
        .finish(settings::Flags::new(flags))
        .map_err(|e| BackendError::Isa {
            setting: "flags".to_owned(),
            detail: e.to_string(),
        })
}

/// Builds the CLIF of one kernel into `func`.
fn build(
    func: &mut Function,
    fctx: &mut FunctionBuilderContext,
    kernel: &Kernel,
    isa: &dyn isa::TargetIsa,
) {
    let b = FunctionBuilder::new(func, fctx);
    let mut fx = Fx::new(b, isa.has_native_fma(), isa.frontend_config());
    kernel.emit(&mut fx);
    fx.finish();
}

/// Machine code of one function, ready for `define_function_bytes`.
struct Compiled {
    align: u64,
    code: Vec<u8>,
    relocs: Vec<ModuleReloc>,
}

/// Builds and compiles one function with the kernel ABI for `isa`; `emit` writes its body.
fn compile(
    isa: &dyn isa::TargetIsa,
    ctx: &mut Context,
    fctx: &mut FunctionBuilderContext,
    func_id: FuncId,
    name: &str,
    emit: impl FnOnce(&mut Fx),
) -> Result<Compiled, BackendError> {
    ctx.clear();
    ctx.func.signature = kernel_signature(isa.default_call_conv());
    ctx.func.name = UserFuncName::user(0, func_id.as_u32());
    let b = FunctionBuilder::new(&mut ctx.func, fctx);
    let mut fx = Fx::new(b, isa.has_native_fma(), isa.frontend_config());
    emit(&mut fx);
    fx.finish();
    ctx.compile(isa, &mut ControlPlane::default())
        .map_err(|e| BackendError::Codegen {
            kernel: name.to_string(),
            detail: format!("{:?}", e.inner),
        })?;
    let code = ctx.compiled_code().expect("compiled just above");
    let relocs = code
        .buffer
        .relocs()
        .iter()
        .map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, func_id))
        .collect();
    Ok(Compiled {
        align: u64::from(code.buffer.alignment),
        code: code.code_buffer().to_vec(),
        relocs,
    })
}

pub struct KernelModule {
    /// Always `Some` until `Drop` takes it to free the code.
    module: Option<JITModule>,
    /// The host ISA with the e-graph optimizer, for most kernels.
    speed: OwnedTargetIsa,
    /// The host ISA without the e-graph optimizer, for kernels whose instruction order is their
    /// schedule.
    in_order: OwnedTargetIsa,
    ctx: Context,
    fctx: FunctionBuilderContext,
    by_spec: HashMap<String, KernelId>,
    ids: Vec<FuncId>,
    names: Vec<String>,
    fns: Vec<KernelFn>,
    /// Kernels declared by `kernel` and not compiled yet: `(index in ids, spec)`.
    pending: Vec<(usize, Kernel)>,
}

impl KernelModule {
    pub fn new() -> Result<Self, BackendError> {
        let isa = host_isa("speed")?;
        let module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let ctx = module.make_context();
        Ok(KernelModule {
            module: Some(module),
            speed: host_isa("speed")?,
            in_order: host_isa("none")?,
            ctx,
            fctx: FunctionBuilderContext::new(),
            by_spec: HashMap::new(),
            ids: Vec::new(),
            names: Vec::new(),
            fns: Vec::new(),
            pending: Vec::new(),
        })
    }

    /// The id of the function for `kernel`, unless an equal spec already has one; `finalize`
    /// compiles it.
    pub fn kernel(&mut self, kernel: &Kernel) -> Result<KernelId, BackendError> {
        let spec = format!("{kernel:?}");
        if let Some(id) = self.by_spec.get(&spec) {
            return Ok(*id);
        }
        let id = self.declare(&kernel.name())?;
        self.pending.push((id.0, kernel.clone()));
        self.by_spec.insert(spec, id);
        Ok(id)
    }

    /// Declares the next function with the kernel ABI.
    fn declare(&mut self, name: &str) -> Result<KernelId, BackendError> {
        let id = KernelId(self.ids.len());
        let name = format!("k{}_{name}", id.0);
        let module = self.module.as_mut().expect("the module lives until drop");
        let sig = kernel_signature(module.isa().default_call_conv());
        let func_id = module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(|e| BackendError::Codegen {
                kernel: name.clone(),
                detail: e.to_string(),
            })?;
        self.ids.push(func_id);
        self.names.push(name);
        Ok(id)
    }

    fn define_bytes(&mut self, id: KernelId, compiled: &Compiled) -> Result<(), BackendError> {
        let module = self.module.as_mut().expect("the module lives until drop");
        module
            .define_function_bytes(
                self.ids[id.0],
                compiled.align,
                &compiled.code,
                &compiled.relocs,
            )
            .map_err(|e| BackendError::Codegen {
                kernel: self.names[id.0].clone(),
                detail: format!("{e:?}"),
            })
    }

    /// Compiles the pending kernels on up to one thread per core (this one and scoped helpers;
    /// if none can start, this thread compiles them all) and defines them in id order.
    fn compile_pending(&mut self) -> Result<(), BackendError> {
        let pending = std::mem::take(&mut self.pending);
        let (speed, in_order, ids, names) = (&*self.speed, &*self.in_order, &self.ids, &self.names);
        let results = map_on_cores(
            &pending,
            || (Context::new(), FunctionBuilderContext::new()),
            |(ctx, fctx), (index, kernel)| {
                let isa = if kernel.in_program_order() {
                    in_order
                } else {
                    speed
                };
                compile(isa, ctx, fctx, ids[*index], &names[*index], |fx| {
                    kernel.emit(fx)
                })
            },
        );
        for ((index, _), compiled) in pending.iter().zip(results) {
            self.define_bytes(KernelId(*index), &compiled?)?;
        }
        Ok(())
    }

    /// Emits and compiles one function with the kernel ABI now; `emit` writes its body. With
    /// `in_order`, the function is compiled without the e-graph pass, so instructions keep the
    /// order in which `emit` wrote them.
    pub fn define(
        &mut self,
        name: &str,
        in_order: bool,
        emit: impl FnOnce(&mut Fx),
    ) -> Result<KernelId, BackendError> {
        let id = self.declare(name)?;
        let isa = if in_order {
            &*self.in_order
        } else {
            &*self.speed
        };
        let compiled = compile(
            isa,
            &mut self.ctx,
            &mut self.fctx,
            self.ids[id.0],
            &self.names[id.0],
            emit,
        )?;
        self.define_bytes(id, &compiled)?;
        Ok(id)
    }

    /// Defines a function with the kernel ABI from machine code generated outside Cranelift
    /// (`x86`): position-independent, with no relocations, following the ABI and the calling
    /// convention's register rules. It is called like any other kernel after `finalize`.
    #[cfg(target_arch = "x86_64")]
    pub fn define_machine_code(
        &mut self,
        name: &str,
        code: Vec<u8>,
    ) -> Result<KernelId, BackendError> {
        let id = self.declare(name)?;
        let compiled = Compiled {
            // A cache line, so that a loop's first instructions share its fetch block.
            align: 64,
            code,
            relocs: Vec::new(),
        };
        self.define_bytes(id, &compiled)?;
        Ok(id)
    }

    /// Makes every defined kernel executable; call once, after the last `kernel`.
    pub fn finalize(&mut self) -> Result<(), BackendError> {
        self.compile_pending()?;
        let module = self.module.as_mut().expect("the module lives until drop");
        module
            .finalize_definitions()
            .map_err(|e| BackendError::Host {
                what: "making the kernels executable".to_owned(),
                detail: e.to_string(),
            })?;
        self.fns = self
            .ids
            .iter()
            .map(|id| {
                let code = module.get_finalized_function(*id);
                // SAFETY: this is the one place a code pointer becomes a function. `code` is the
                // finalized (executable) entry of a function declared with
                // `kernel_signature(default_call_conv)`, which is the C ABI of `KernelFn` on the
                // host; the code stays mapped until `Drop` frees the module, and every `KernelFn`
                // lives inside this struct, so none outlives it.
                unsafe { std::mem::transmute::<*const u8, KernelFn>(code) }
            })
            .collect();
        Ok(())
    }

    pub fn get(&self, id: KernelId) -> KernelFn {
        self.fns[id.0]
    }

    /// The symbol name of a kernel (`k<id>_<kernel name>`).
    pub fn name(&self, id: KernelId) -> &str {
        &self.names[id.0]
    }

    /// Number of distinct compiled functions.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

impl Drop for KernelModule {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the function pointers in `fns` are dropped with `self` and are never
            // handed out beyond its lifetime (`Jit` owns this module and calls kernels only
            // through it), so no code of the module runs after this point.
            unsafe { module.free_memory() };
        }
    }
}

/// The CLIF text of `kernels` for the fixed ISA, in order, each checked by the verifier.
pub fn clif_text(kernels: &[Kernel]) -> Result<String, BackendError> {
    let isa = fixed_isa()?;
    let sig = kernel_signature(isa.default_call_conv());
    let mut fctx = FunctionBuilderContext::new();
    let mut out = String::new();
    for (i, kernel) in kernels.iter().enumerate() {
        let mut func = Function::with_name_signature(UserFuncName::user(0, i as u32), sig.clone());
        build(&mut func, &mut fctx, kernel, &*isa);
        verify_function(&func, &*isa).map_err(|e| BackendError::Codegen {
            kernel: kernel.name().to_string(),
            detail: e.to_string(),
        })?;
        out.push_str(&format!("; k{i}_{}\n", kernel.name()));
        out.push_str(&func.display().to_string());
        out.push('\n');
    }
    Ok(out)
}

/// The host disassembly of one kernel, for inspecting register allocation in the inner loops.
#[cfg(test)]
pub fn disassemble(kernel: &Kernel) -> Result<String, BackendError> {
    let isa = host_isa(if kernel.in_program_order() {
        "none"
    } else {
        "speed"
    })?;
    let mut ctx = Context::new();
    ctx.func.signature = kernel_signature(isa.default_call_conv());
    let mut fctx = FunctionBuilderContext::new();
    build(&mut ctx.func, &mut fctx, kernel, &*isa);
    ctx.set_disasm(true);
    let code = ctx
        .compile(&*isa, &mut Default::default())
        .map_err(|e| BackendError::Codegen {
            kernel: kernel.name().to_string(),
            detail: format!("{e:?}"),
        })?;
    Ok(code.vcode.clone().unwrap_or_default())
}
