//! A model's weights and a checkpoint's optimizer state as safetensors files.
//!
//! `weights.safetensors` holds every parameter of the IR (batch-norm moving statistics included)
//! under its IR name (`dense_3.kernel`, `batch_norm_1.moving_mean`), as little-endian f32 with the
//! IR shape; its metadata names the model and the netc version that wrote it, so other tools
//! (Python's `safetensors`, for instance) can read it too. The optimizer state goes in a separate
//! file with tensors `opt.<param>.<slot>` and the step counter in the metadata. Loading checks the
//! file against the `Program` and reports every mismatch at once; it never trusts the file's
//! shapes. Files are written with `report::atomic_write`. This module knows nothing about how the
//! parameters are used.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use netc_ir::backend::TrainState;
use netc_ir::ir::Program;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::report::{atomic_write, ReportError};

/// The netc version recorded in the files this module writes.
pub const NETC_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Metadata keys.
const MODEL_KEY: &str = "model";
const VERSION_KEY: &str = "netc_version";
const CONTENT_KEY: &str = "netc_content";
const STEP_KEY: &str = "step";
const OPTIMIZER_KEY: &str = "optimizer";

/// What a file holds, recorded under `netc_content` so that a weights file handed where optimizer
/// state is expected (or the reverse) is named as such instead of as a pile of mismatches.
const PARAMS_CONTENT: &str = "params";
const OPTIMIZER_CONTENT: &str = "optimizer";

/// One way a tensor in a file disagrees with the program it is loaded for.
#[derive(Debug, PartialEq, thiserror::Error, miette::Diagnostic)]
pub enum TensorProblem {
    #[error("tensor `{name}` is missing")]
    #[diagnostic(code(netc::weights::missing_tensor))]
    Missing { name: String },
    #[error("tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    #[diagnostic(code(netc::weights::wrong_shape))]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` holds {found}, netc stores F32")]
    #[diagnostic(code(netc::weights::wrong_dtype))]
    Dtype { name: String, found: String },
    #[error("tensor `{name}` does not belong to this model")]
    #[diagnostic(code(netc::weights::unexpected_tensor))]
    Unexpected { name: String },
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum WeightsError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Io(#[from] ReportError),
    #[error("{} is not a valid safetensors file: {reason}", path.display())]
    #[diagnostic(
        code(netc::weights::corrupt),
        help("the file is damaged or was not written by netc; rerun the training that made it")
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("{} holds {found}, not {expected}", path.display())]
    #[diagnostic(
        code(netc::weights::wrong_content),
        help("weights and optimizer state are separate files; pass the other one here")
    )]
    WrongContent {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },
    #[error("{} does not fit model `{model}`: {} mismatched tensor(s)", path.display(), problems.len())]
    #[diagnostic(
        code(netc::weights::mismatch),
        help(
            "the file was written for a different architecture (or optimizer); load it with the \
             spec that produced it, or train this spec from scratch"
        )
    )]
    Mismatch {
        path: PathBuf,
        model: String,
        #[related]
        problems: Vec<TensorProblem>,
    },
    #[error("{} has no valid `step` in its metadata", path.display())]
    #[diagnostic(
        code(netc::weights::bad_step),
        help("the checkpoint is damaged; rerun the training that made it")
    )]
    BadStep { path: PathBuf },
    #[error("the training state does not match model `{model}`: {reason}")]
    #[diagnostic(code(netc::weights::state_mismatch), help("this is a bug in netc"))]
    StateMismatch { model: String, reason: String },
}

/// Optimizer state as `save_optimizer` stores it: `TrainState::slots` and `TrainState::step`.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub slots: Vec<Vec<ArrayD<f32>>>,
    pub step: u64,
}

/// Name of the `slot`th optimizer array of parameter `param`.
pub fn slot_name(param: &str, slot: usize) -> String {
    format!("opt.{param}.{slot}")
}

/// An f32 tensor ready for `safetensors::serialize`.
struct F32Tensor {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl F32Tensor {
    fn new(array: &ArrayD<f32>) -> Self {
        // Iterating in logical order writes row-major data whatever the array's memory layout.
        let bytes = array.iter().flat_map(|v| v.to_le_bytes()).collect();
        F32Tensor {
            shape: array.shape().to_vec(),
            bytes,
        }
    }
}

impl safetensors::View for &F32Tensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.bytes[..]).into()
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn state_mismatch(program: &Program, reason: String) -> WeightsError {
    WeightsError::StateMismatch {
        model: program.name.clone(),
        reason,
    }
}

/// Checks that `arrays` has one array per parameter, each of the parameter's shape.
fn check_params(program: &Program, arrays: &[ArrayD<f32>]) -> Result<(), WeightsError> {
    if arrays.len() != program.params.len() {
        return Err(state_mismatch(
            program,
            format!(
                "{} parameter arrays for {} parameters",
                arrays.len(),
                program.params.len()
            ),
        ));
    }
    for (param, array) in program.params.iter().zip(arrays) {
        if array.shape() != param.shape.as_slice() {
            return Err(state_mismatch(
                program,
                format!(
                    "`{}` has shape {:?}, expected {:?}",
                    param.name,
                    array.shape(),
                    param.shape
                ),
            ));
        }
    }
    Ok(())
}

fn write_tensors(
    path: &Path,
    tensors: Vec<(String, F32Tensor)>,
    metadata: HashMap<String, String>,
) -> Result<(), WeightsError> {
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n, t)), Some(metadata))
        .map_err(|e| WeightsError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    atomic_write(path, &bytes).map_err(|e| ReportError::write(path, e))?;
    Ok(())
}

fn base_metadata(program: &Program, content: &str) -> HashMap<String, String> {
    HashMap::from([
        (MODEL_KEY.to_string(), program.name.clone()),
        (VERSION_KEY.to_string(), NETC_VERSION.to_string()),
        (CONTENT_KEY.to_string(), content.to_string()),
    ])
}

/// Writes every parameter of `state` (trainable or not) to `path`.
pub fn save_params(path: &Path, program: &Program, state: &TrainState) -> Result<(), WeightsError> {
    check_params(program, &state.params)?;
    let tensors = program
        .params
        .iter()
        .zip(&state.params)
        .map(|(param, array)| (param.name.clone(), F32Tensor::new(array)))
        .collect();
    write_tensors(path, tensors, base_metadata(program, PARAMS_CONTENT))
}

/// Writes the optimizer slots and step of `state` to `path`, for resuming training.
pub fn save_optimizer(
    path: &Path,
    program: &Program,
    state: &TrainState,
) -> Result<(), WeightsError> {
    let expected = expected_slots(program);
    if state.slots.len() != program.params.len() {
        return Err(state_mismatch(
            program,
            format!(
                "{} slot lists for {} parameters",
                state.slots.len(),
                program.params.len()
            ),
        ));
    }
    let mut tensors = Vec::new();
    for ((param, slots), count) in program.params.iter().zip(&state.slots).zip(expected) {
        if slots.len() != count {
            return Err(state_mismatch(
                program,
                format!(
                    "`{}` has {} optimizer slots, expected {count}",
                    param.name,
                    slots.len()
                ),
            ));
        }
        for (index, slot) in slots.iter().enumerate() {
            if slot.shape() != param.shape.as_slice() {
                return Err(state_mismatch(
                    program,
                    format!(
                        "slot {index} of `{}` has shape {:?}, expected {:?}",
                        param.name,
                        slot.shape(),
                        param.shape
                    ),
                ));
            }
            tensors.push((slot_name(&param.name, index), F32Tensor::new(slot)));
        }
    }
    let mut metadata = base_metadata(program, OPTIMIZER_CONTENT);
    metadata.insert(STEP_KEY.to_string(), state.step.to_string());
    metadata.insert(
        OPTIMIZER_KEY.to_string(),
        program.train.optimizer.kind.name().to_string(),
    );
    write_tensors(path, tensors, metadata)
}

/// Slots per parameter: the optimizer's count for trainable parameters, none for the others.
fn expected_slots(program: &Program) -> Vec<usize> {
    let per_param = program.train.optimizer.kind.slot_count();
    program
        .params
        .iter()
        .map(|p| if p.trainable { per_param } else { 0 })
        .collect()
}

/// A parsed file: its bytes are owned here so the tensor views can borrow them.
struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TensorFile {
    fn read(path: &Path) -> Result<Self, WeightsError> {
        let bytes = fs::read(path).map_err(|e| ReportError::read(path, e))?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            bytes,
        })
    }

    fn corrupt(&self, reason: String) -> WeightsError {
        WeightsError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    fn parse(&self) -> Result<(SafeTensors<'_>, HashMap<String, String>), WeightsError> {
        let (_, metadata) =
            SafeTensors::read_metadata(&self.bytes).map_err(|e| self.corrupt(e.to_string()))?;
        let tensors =
            SafeTensors::deserialize(&self.bytes).map_err(|e| self.corrupt(e.to_string()))?;
        Ok((tensors, metadata.metadata().clone().unwrap_or_default()))
    }

    /// Rejects a file whose metadata says it holds something else. Files without the key
    /// (written by other tools) are checked by their tensors alone.
    fn check_content(
        &self,
        metadata: &HashMap<String, String>,
        expected: &'static str,
    ) -> Result<(), WeightsError> {
        match metadata.get(CONTENT_KEY) {
            Some(found) if found != expected => Err(WeightsError::WrongContent {
                path: self.path.clone(),
                expected: content_description(expected),
                found: content_description(found).to_string(),
            }),
            _ => Ok(()),
        }
    }
}

fn content_description(content: &str) -> &'static str {
    match content {
        PARAMS_CONTENT => "model weights",
        OPTIMIZER_CONTENT => "optimizer state",
        _ => "unknown content",
    }
}

/// Takes the expected tensors out of `tensors`, in order, converting each to an f32 array of the
/// expected shape; every problem (missing, wrong shape or dtype, left over) is collected.
fn take_tensors(
    file: &TensorFile,
    program: &Program,
    tensors: &SafeTensors<'_>,
    expected: &[(String, Vec<usize>)],
) -> Result<Vec<ArrayD<f32>>, WeightsError> {
    let mut found: BTreeMap<String, TensorView<'_>> = tensors
        .iter()
        .map(|(name, view)| (name.to_string(), view))
        .collect();
    let mut problems = Vec::new();
    let mut arrays = Vec::with_capacity(expected.len());
    for (name, shape) in expected {
        let Some(view) = found.remove(name) else {
            problems.push(TensorProblem::Missing { name: name.clone() });
            continue;
        };
        if view.dtype() != Dtype::F32 {
            problems.push(TensorProblem::Dtype {
                name: name.clone(),
                found: view.dtype().to_string(),
            });
        } else if view.shape() != shape.as_slice() {
            problems.push(TensorProblem::Shape {
                name: name.clone(),
                expected: shape.clone(),
                found: view.shape().to_vec(),
            });
        } else {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            // safetensors has checked that the data length matches the shape and dtype.
            let array = ArrayD::from_shape_vec(IxDyn(shape), values)
                .map_err(|e| file.corrupt(format!("tensor `{name}`: {e}")))?;
            arrays.push(array);
        }
    }
    problems.extend(
        found
            .into_keys()
            .map(|name| TensorProblem::Unexpected { name }),
    );
    if problems.is_empty() {
        Ok(arrays)
    } else {
        Err(WeightsError::Mismatch {
            path: file.path.clone(),
            model: program.name.clone(),
            problems,
        })
    }
}

/// Reads the parameters saved by `save_params`, indexed like `Program::params`.
pub fn load_params(path: &Path, program: &Program) -> Result<Vec<ArrayD<f32>>, WeightsError> {
    let file = TensorFile::read(path)?;
    let (tensors, metadata) = file.parse()?;
    file.check_content(&metadata, PARAMS_CONTENT)?;
    let expected: Vec<_> = program
        .params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    take_tensors(&file, program, &tensors, &expected)
}

/// Reads the optimizer state saved by `save_optimizer`, checked against the program's optimizer.
pub fn load_optimizer(path: &Path, program: &Program) -> Result<OptimizerState, WeightsError> {
    let file = TensorFile::read(path)?;
    let (tensors, metadata) = file.parse()?;
    file.check_content(&metadata, OPTIMIZER_CONTENT)?;
    let step = metadata
        .get(STEP_KEY)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| WeightsError::BadStep {
            path: path.to_path_buf(),
        })?;
    let counts = expected_slots(program);
    let expected: Vec<_> = program
        .params
        .iter()
        .zip(&counts)
        .flat_map(|(param, &count)| {
            (0..count).map(|slot| (slot_name(&param.name, slot), param.shape.clone()))
        })
        .collect();
    let mut arrays = take_tensors(&file, program, &tensors, &expected)?.into_iter();
    let slots = counts
        .iter()
        .map(|&count| arrays.by_ref().take(count).collect())
        .collect();
    Ok(OptimizerState { slots, step })
}

/// The full training state of a checkpoint: `load_params` and `load_optimizer` together.
pub fn load_train_state(
    params_path: &Path,
    optimizer_path: &Path,
    program: &Program,
) -> Result<TrainState, WeightsError> {
    let params = load_params(params_path, program)?;
    let OptimizerState { slots, step } = load_optimizer(optimizer_path, program)?;
    Ok(TrainState {
        params,
        slots,
        step,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ShapeBuilder;
    use netc_ir::ir::{
        Augment, Dataset, EvalConfig, Head, Init, Input, Op, OpKind, Optimizer, OptimizerKind,
        Param, ParamId, ParamRole, Preprocess, Regularizer, Schedule, Shape, StatsScope,
        TrainConfig, ValueId,
    };

    fn param(name: &str, role: ParamRole, shape: &[usize]) -> Param {
        Param {
            name: name.to_string(),
            role,
            shape: shape.to_vec(),
            init: Init::Zeros,
            trainable: !matches!(role, ParamRole::MovingMean | ParamRole::MovingVariance),
        }
    }

    /// dense(4 → 3) → batch norm → dense(3 → 2), trained with Adam (two slots per parameter).
    fn program(hidden: usize) -> Program {
        let params = vec![
            param("dense_1.kernel", ParamRole::Kernel, &[4, hidden]),
            param("dense_1.bias", ParamRole::Bias, &[hidden]),
            param("batch_norm_1.gamma", ParamRole::Gamma, &[hidden]),
            param("batch_norm_1.beta", ParamRole::Beta, &[hidden]),
            param("batch_norm_1.moving_mean", ParamRole::MovingMean, &[hidden]),
            param(
                "batch_norm_1.moving_variance",
                ParamRole::MovingVariance,
                &[hidden],
            ),
            param("dense_2.kernel", ParamRole::Kernel, &[hidden, 2]),
            param("dense_2.bias", ParamRole::Bias, &[2]),
        ];
        let op = |index: u32, layer: &str, width_in: usize, width: usize, kind| Op {
            layer: layer.to_string(),
            index,
            input: ValueId(index),
            output: ValueId(index + 1),
            width_in,
            width,
            shape_in: Shape::Flat(width_in),
            shape: Shape::Flat(width),
            kind,
        };
        let dense = |kernel, bias| OpKind::Dense {
            kernel: ParamId(kernel),
            bias: Some(ParamId(bias)),
            regularizer: Regularizer::default(),
            max_norm: None,
        };
        Program {
            name: "tiny".to_string(),
            input: Input {
                dataset: Dataset::Cifar10,
                features: 4,
                shape: Shape::Flat(4),
                classes: 2,
                preprocess: Preprocess::Scale01,
                stats_scope: StatsScope::Feature,
            },
            params,
            ops: vec![
                op(0, "dense_1", 4, hidden, dense(0, 1)),
                op(
                    1,
                    "batch_norm_1",
                    hidden,
                    hidden,
                    OpKind::BatchNorm {
                        gamma: ParamId(2),
                        beta: ParamId(3),
                        moving_mean: ParamId(4),
                        moving_variance: ParamId(5),
                        momentum: 0.99,
                        epsilon: 1e-3,
                    },
                ),
                op(2, "dense_2", hidden, 2, dense(6, 7)),
            ],
            head: Head::SoftmaxCrossEntropy,
            train: TrainConfig {
                optimizer: Optimizer {
                    kind: OptimizerKind::Adam {
                        beta_1: 0.9,
                        beta_2: 0.999,
                        epsilon: 1e-7,
                    },
                    lr: 1e-3,
                    clipnorm: None,
                },
                schedule: Schedule::Constant,
                batch: 8,
                epochs: 1,
                validation: 0,
                early_stopping: None,
                augment: Augment::default(),
                seed: 1,
            },
            eval: EvalConfig::default(),
        }
    }

    /// A state whose every value is distinct, so a swapped or transposed tensor shows.
    fn state(program: &Program) -> TrainState {
        let mut next = 0.0f32;
        let mut fill = |shape: &[usize]| {
            ArrayD::from_shape_fn(IxDyn(shape), |_| {
                next += 1.0;
                next * 0.125 - 3.0
            })
        };
        let params = program.params.iter().map(|p| fill(&p.shape)).collect();
        let slots = program
            .params
            .iter()
            .zip(expected_slots(program))
            .map(|(p, n)| (0..n).map(|_| fill(&p.shape)).collect())
            .collect();
        TrainState {
            params,
            slots,
            step: 1234,
        }
    }

    fn mismatches(result: Result<impl std::fmt::Debug, WeightsError>) -> Vec<TensorProblem> {
        match result {
            Err(WeightsError::Mismatch { problems, .. }) => problems,
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn params_round_trip_under_their_ir_names() {
        let program = program(3);
        let mut state = state(&program);
        // A transposed view has a non-standard memory layout; it must still be saved row-major.
        let mut column_major = ArrayD::zeros(IxDyn(&[3, 2]).f());
        column_major.assign(&state.params[6]);
        state.params[6] = column_major;
        assert!(!state.params[6].is_standard_layout());
        state.params[0][[1, 2]] = f32::NAN;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        save_params(&path, &program, &state).unwrap();

        let bytes = fs::read(&path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut names = file.names();
        names.sort_unstable();
        let mut expected: Vec<&str> = program.params.iter().map(|p| p.name.as_str()).collect();
        expected.sort_unstable();
        assert_eq!(names, expected);
        let kernel = file.tensor("dense_1.kernel").unwrap();
        assert_eq!(kernel.dtype(), Dtype::F32);
        assert_eq!(kernel.shape(), &[4, 3]);
        // Row-major little-endian: element [0, 1] is the second value.
        assert_eq!(kernel.data()[4..8], state.params[0][[0, 1]].to_le_bytes());
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let metadata = metadata.metadata().clone().unwrap();
        assert_eq!(metadata[MODEL_KEY], "tiny");
        assert_eq!(metadata[VERSION_KEY], NETC_VERSION);

        let loaded = load_params(&path, &program).unwrap();
        assert_eq!(loaded.len(), state.params.len());
        for (a, b) in loaded.iter().zip(&state.params) {
            assert_eq!(a.shape(), b.shape());
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{a:?} != {b:?}");
        }
    }

    #[test]
    fn optimizer_state_round_trips_with_its_step() {
        let program = program(3);
        let state = state(&program);
        let dir = tempfile::tempdir().unwrap();
        let params_path = dir.path().join("weights.safetensors");
        let optimizer_path = dir.path().join("optimizer.safetensors");
        save_params(&params_path, &program, &state).unwrap();
        save_optimizer(&optimizer_path, &program, &state).unwrap();

        let bytes = fs::read(&optimizer_path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        assert!(file.names().contains(&"opt.dense_1.kernel.1"));
        assert!(!file.names().iter().any(|n| n.contains("moving")));
        assert_eq!(file.len(), 6 * 2);

        let optimizer = load_optimizer(&optimizer_path, &program).unwrap();
        assert_eq!(optimizer.step, 1234);
        assert_eq!(optimizer.slots, state.slots);
        assert_eq!(
            load_train_state(&params_path, &optimizer_path, &program).unwrap(),
            state
        );
    }

    #[test]
    fn loading_for_another_architecture_lists_every_mismatch() {
        let saved = program(3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        save_params(&path, &saved, &state(&saved)).unwrap();

        let wider = program(5);
        let problems = mismatches(load_params(&path, &wider));
        assert_eq!(problems.len(), 7, "{problems:?}");
        assert!(problems.contains(&TensorProblem::Shape {
            name: "dense_1.kernel".to_string(),
            expected: vec![4, 5],
            found: vec![4, 3],
        }));
        assert!(!problems
            .iter()
            .any(|p| matches!(p, TensorProblem::Shape { name, .. } if name == "dense_2.bias")));

        let mut renamed = program(3);
        renamed.params[7].name = "dense_out.bias".to_string();
        let problems = mismatches(load_params(&path, &renamed));
        assert_eq!(
            problems,
            vec![
                TensorProblem::Missing {
                    name: "dense_out.bias".to_string()
                },
                TensorProblem::Unexpected {
                    name: "dense_2.bias".to_string()
                },
            ]
        );
        let err = load_params(&path, &renamed).unwrap_err();
        assert!(
            err.to_string().contains("does not fit model `tiny`"),
            "{err}"
        );
    }

    #[test]
    fn a_tensor_of_another_dtype_is_rejected() {
        let program = program(3);
        let mut tensors: Vec<(String, TensorView<'_>)> = Vec::new();
        let zeros = [0u8; 64];
        for p in &program.params {
            let view = if p.name == "dense_2.bias" {
                TensorView::new(Dtype::F64, p.shape.clone(), &zeros[..8 * p.len()])
            } else {
                TensorView::new(Dtype::F32, p.shape.clone(), &zeros[..4 * p.len()])
            };
            tensors.push((p.name.clone(), view.unwrap()));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("foreign.safetensors");
        safetensors::serialize_to_file(tensors, None, &path).unwrap();
        assert_eq!(
            mismatches(load_params(&path, &program)),
            vec![TensorProblem::Dtype {
                name: "dense_2.bias".to_string(),
                found: "F64".to_string()
            }]
        );
    }

    #[test]
    fn optimizer_state_of_another_optimizer_is_rejected() {
        let program = program(3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        save_optimizer(&path, &program, &state(&program)).unwrap();
        let mut adagrad = program.clone();
        adagrad.train.optimizer.kind = OptimizerKind::Adagrad {
            initial_accumulator: 0.1,
            epsilon: 1e-7,
        };
        let problems = mismatches(load_optimizer(&path, &adagrad));
        assert_eq!(problems.len(), 6, "{problems:?}");
        assert!(problems
            .iter()
            .all(|p| matches!(p, TensorProblem::Unexpected { name } if name.ends_with(".1"))));
    }

    #[test]
    fn weights_and_optimizer_files_are_not_interchangeable() {
        let program = program(3);
        let state = state(&program);
        let dir = tempfile::tempdir().unwrap();
        let params_path = dir.path().join("weights.safetensors");
        let optimizer_path = dir.path().join("optimizer.safetensors");
        save_params(&params_path, &program, &state).unwrap();
        save_optimizer(&optimizer_path, &program, &state).unwrap();
        let err = load_optimizer(&params_path, &program).unwrap_err();
        assert!(matches!(err, WeightsError::WrongContent { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("holds model weights, not optimizer state"),
            "{err}"
        );
        assert!(matches!(
            load_params(&optimizer_path, &program),
            Err(WeightsError::WrongContent { .. })
        ));
    }

    #[test]
    fn corrupt_and_missing_files_are_clear_errors() {
        let program = program(3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        save_params(&path, &program, &state(&program)).unwrap();
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = load_params(&path, &program).unwrap_err();
        assert!(matches!(err, WeightsError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("weights.safetensors"), "{err}");

        fs::write(&path, b"not a safetensors file").unwrap();
        assert!(matches!(
            load_params(&path, &program),
            Err(WeightsError::Corrupt { .. })
        ));

        let missing = dir.path().join("missing.safetensors");
        let err = load_params(&missing, &program).unwrap_err();
        assert!(
            matches!(err, WeightsError::Io(ReportError::Read { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn a_checkpoint_without_a_step_is_rejected() {
        let program = program(3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let state = state(&program);
        let tensors: Vec<_> = program
            .params
            .iter()
            .zip(&state.slots)
            .flat_map(|(p, slots)| {
                slots
                    .iter()
                    .enumerate()
                    .map(move |(i, slot)| (slot_name(&p.name, i), F32Tensor::new(slot)))
            })
            .collect();
        write_tensors(&path, tensors, base_metadata(&program, OPTIMIZER_CONTENT)).unwrap();
        assert!(matches!(
            load_optimizer(&path, &program),
            Err(WeightsError::BadStep { .. })
        ));
    }

    #[test]
    fn saving_a_state_of_the_wrong_shape_is_refused_and_writes_nothing() {
        let program = program(3);
        let mut state = state(&program);
        state.params[1] = ArrayD::zeros(IxDyn(&[4]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        let err = save_params(&path, &program, &state).unwrap_err();
        assert!(
            err.to_string().contains("`dense_1.bias` has shape [4]"),
            "{err}"
        );
        assert!(!path.exists());

        let mut state = self::state(&program);
        state.slots[4].push(ArrayD::zeros(IxDyn(&[3])));
        let err = save_optimizer(&path, &program, &state).unwrap_err();
        assert!(
            err.to_string()
                .contains("has 1 optimizer slots, expected 0"),
            "{err}"
        );
        assert!(!path.exists());
    }
}
