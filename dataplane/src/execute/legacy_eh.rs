//! Legacy exception handling → standard exception handling, on `wasmparser` + `wasm-encoder`.
//!
//! Many deployed aos modules use the legacy opcodes (`try`, `catch`, `catch_all`, `rethrow`,
//! `delegate`), which wasmtime 48 cannot compile. [`rewrite`] translates every function body to
//! the standard form (`try_table`, `throw_ref`, `exnref`) before compiling; the process keeps the
//! id of the original bytes. The translation, per construct:
//!
//! ```text
//! try bt                      block $outer bt                        ;; `br` to the try
//!   body                        block $h1 [P]->[T1 exnref]           ;; one per clause, last outermost
//! catch $t1                       try_table bt (catch_ref $t1 $h1) (catch_all_ref $h2)
//!   handler1                        body
//! catch_all                       end
//!   handler2                      br $outer
//! end                           end  local.set $exn  handler1  br $outer
//!                             end  local.set $exn  handler2  (end of $outer)
//!
//! rethrow N                   local.get $exn(N) throw_ref     ;; $exn of the try at label N
//! try bt body delegate N      try_table bt (catch_all_ref $land(N)) body end
//! ```
//!
//! `delegate N` rethrows "as if thrown at label N". Its landing pad `$land` is a block placed
//! where that is true:
//!
//! - label N is a `try` still in its body (its handlers must see the exception): a block around
//!   the body, *inside* the `try_table`, ending in `throw_ref`;
//! - any other label (block, loop, if, a `try` in a handler, the function itself): blocks
//!   *around* the construct — no handler sits between the inside and the outside of such a
//!   label, so throwing right after it is the same:
//!   `block $x [P]->[R] block $land [P]->[exnref] <construct> br $x end throw_ref end`.
//!
//! Every branch depth is renumbered for the added blocks. New block types with several values or
//! parameters are appended to the type section. Each `try` with handlers gets an `exnref` local
//! per nesting depth, appended to the function's locals.
//!
//! The same rewrite can export mutable globals a module keeps to itself (emscripten's stack
//! pointer), so a snapshot saves them by name.

use std::collections::HashMap;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{BlockType, Catch, Encode, ExportKind, Function, Instruction};
use wasmparser::{FunctionBody, Operator, Parser, Payload, WasmFeatures};

/// Most nested blocks a translated function may have. The validator's own limit is far higher;
/// this bounds the translator's stacks (each frame a few words).
pub const CONTROL_DEPTH_MAX: usize = 65_536;

/// What [`rewrite`] should do.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rewrite {
    /// Mutable globals (by index) to export under the given names.
    pub(crate) export_globals: Vec<(u32, String)>,
}

/// Parser features: everything wasmparser knows, plus the legacy opcodes.
pub(crate) fn parse_features() -> WasmFeatures {
    WasmFeatures::all()
}

/// True when some function body uses a legacy exception opcode.
///
/// # Errors
/// The module does not parse.
pub(crate) fn uses_legacy(wasm: &[u8]) -> Result<bool, String> {
    let mut parser = Parser::new(0);
    parser.set_features(parse_features());
    for payload in parser.parse_all(wasm) {
        if let Payload::CodeSectionEntry(body) = payload.map_err(|e| e.to_string())? {
            let mut reader = body.get_operators_reader().map_err(|e| e.to_string())?;
            while !reader.eof() {
                if matches!(
                    reader.read().map_err(|e| e.to_string())?,
                    Operator::Try { .. }
                        | Operator::Catch { .. }
                        | Operator::CatchAll
                        | Operator::Rethrow { .. }
                        | Operator::Delegate { .. }
                ) {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// Translates every function body from legacy to standard exception handling and adds the
/// exports in `spec`. The result is a new module; the caller validates it.
///
/// # Errors
/// A malformed module, or a legacy construct used in a way the spec forbids (for example
/// `rethrow` to a label that is not a `catch`), described in words.
pub(crate) fn rewrite(wasm: &[u8], spec: &Rewrite) -> Result<Vec<u8>, String> {
    let info = ModuleInfo::read(wasm)?;
    let mut registry = TypeRegistry {
        first: u32::try_from(info.types.len()).map_err(|_| "too many types")?,
        added: Vec::new(),
        index: HashMap::new(),
    };
    let mut bodies = Vec::with_capacity(info.bodies.len());
    for (i, (start, end)) in info.bodies.iter().enumerate() {
        let function = info.imported_functions as usize + i;
        let ty = info
            .functions
            .get(function)
            .and_then(|t| info.types.get(*t as usize))
            .and_then(Option::as_ref)
            .ok_or("function without a function type")?;
        let body = FunctionBody::new(wasmparser::BinaryReader::new_features(
            &wasm[*start..*end],
            *start,
            parse_features(),
        ));
        let encoded = translate_body(&info, &mut registry, ty, &body)
            .map_err(|e| format!("function {function}: {e}"))?;
        bodies.push(encoded);
    }
    let mut out = Rewriter {
        registry: &registry,
        bodies,
        exports: &spec.export_globals,
        saw_types: false,
    };
    let mut module = wasm_encoder::Module::new();
    let mut parser = Parser::new(0);
    parser.set_features(parse_features());
    out.parse_core_module(&mut module, parser, wasm)
        .map_err(|e| format!("re-encoding: {e}"))?;
    if !registry.added.is_empty() && !out.saw_types {
        return Err("module has no type section".into());
    }
    Ok(module.finish())
}

/// A function type: parameters and results.
/// A function type: parameters and results.
pub(super) type Signature = (Vec<wasmparser::ValType>, Vec<wasmparser::ValType>);

/// Appends a type section's types to `types` by index: `Some` for function types, `None` for
/// the other composite types (they still take an index).
///
/// # Errors
/// The reader's error, as text.
pub(super) fn read_types(
    reader: wasmparser::TypeSectionReader<'_>,
    types: &mut Vec<Option<Signature>>,
) -> Result<(), String> {
    for group in reader {
        for sub in group.map_err(|e| e.to_string())?.into_types() {
            types.push(match sub.composite_type.inner {
                wasmparser::CompositeInnerType::Func(f) => {
                    Some((f.params().to_vec(), f.results().to_vec()))
                }
                _ => None,
            });
        }
    }
    Ok(())
}

/// What the translation needs to know about the module.
struct ModuleInfo {
    /// Function types by type index (`None` for other composite types).
    types: Vec<Option<Signature>>,
    /// Type index of each function, imports first.
    functions: Vec<u32>,
    imported_functions: u32,
    /// Type index of each tag, imports first.
    tags: Vec<u32>,
    /// Byte range of each function body in the module.
    bodies: Vec<(usize, usize)>,
}

impl ModuleInfo {
    fn read(wasm: &[u8]) -> Result<Self, String> {
        let mut info = Self {
            types: Vec::new(),
            functions: Vec::new(),
            imported_functions: 0,
            tags: Vec::new(),
            bodies: Vec::new(),
        };
        let mut parser = Parser::new(0);
        parser.set_features(parse_features());
        let e = |e: wasmparser::BinaryReaderError| e.to_string();
        for payload in parser.parse_all(wasm) {
            match payload.map_err(e)? {
                Payload::TypeSection(reader) => read_types(reader, &mut info.types)?,
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        match import.map_err(e)?.ty {
                            wasmparser::TypeRef::Func(t) | wasmparser::TypeRef::FuncExact(t) => {
                                info.functions.push(t);
                                info.imported_functions += 1;
                            }
                            wasmparser::TypeRef::Tag(tag) => info.tags.push(tag.func_type_idx),
                            _ => {}
                        }
                    }
                }
                Payload::FunctionSection(reader) => {
                    for t in reader {
                        info.functions.push(t.map_err(e)?);
                    }
                }
                Payload::TagSection(reader) => {
                    for tag in reader {
                        info.tags.push(tag.map_err(e)?.func_type_idx);
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let range = body.range();
                    info.bodies.push((range.start, range.end));
                }
                _ => {}
            }
        }
        Ok(info)
    }

    fn signature(&self, ty: u32) -> Result<&Signature, String> {
        self.types
            .get(ty as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("type {ty} is not a function type"))
    }

    fn block_signature(&self, ty: wasmparser::BlockType) -> Result<Signature, String> {
        Ok(match ty {
            wasmparser::BlockType::Empty => (vec![], vec![]),
            wasmparser::BlockType::Type(t) => (vec![], vec![t]),
            wasmparser::BlockType::FuncType(i) => self.signature(i)?.clone(),
        })
    }

    fn tag_params(&self, tag: u32) -> Result<Vec<wasmparser::ValType>, String> {
        let ty = self
            .tags
            .get(tag as usize)
            .ok_or_else(|| format!("unknown tag {tag}"))?;
        Ok(self.signature(*ty)?.0.clone())
    }
}

/// Function types the translation adds, after the module's own.
struct TypeRegistry {
    first: u32,
    added: Vec<Signature>,
    index: HashMap<Signature, u32>,
}

impl TypeRegistry {
    /// The block type for `signature`: inline when it has no params and at most one result,
    /// else a (possibly new) type index.
    fn block(&mut self, signature: Signature) -> Result<BlockType, String> {
        let convert = |t: wasmparser::ValType| {
            RoundtripReencoder
                .val_type(t)
                .map_err(|e| format!("value type: {e}"))
        };
        match (signature.0.as_slice(), signature.1.as_slice()) {
            ([], []) => return Ok(BlockType::Empty),
            ([], [t]) => return Ok(BlockType::Result(convert(*t)?)),
            _ => {}
        }
        if let Some(index) = self.index.get(&signature) {
            return Ok(BlockType::FunctionType(*index));
        }
        let index = self
            .first
            .checked_add(u32::try_from(self.added.len()).map_err(|_| "too many types")?)
            .ok_or("too many types")?;
        self.added.push(signature.clone());
        self.index.insert(signature, index);
        Ok(BlockType::FunctionType(index))
    }
}

/// What the pre-scan learns about one block-like construct (by opening order).
#[derive(Debug, Clone, Default)]
struct Plan {
    /// Legacy try: its clauses' tags (`None` = `catch_all`).
    clauses: Vec<Option<u32>>,
    /// Legacy try ending in `delegate`: the opening ordinal of the target (`None`: function),
    /// and whether the target was a `try` still in its body.
    delegate: Option<(Option<usize>, bool)>,
    is_try: bool,
    is_try_table: bool,
    /// A delegate lands inside this construct's body (it is a `try` with handlers).
    inner_land: bool,
    /// A delegate lands right after this construct.
    outer_land: bool,
}

impl Plan {
    /// A legacy try that needs a `try_table` (it has handlers or delegates).
    fn handles(&self) -> bool {
        self.is_try && (!self.clauses.is_empty() || self.delegate.is_some())
    }
}

/// First pass: the clauses of every try, the target of every delegate, and where landing pads
/// go. Returns the plans by opening ordinal, plus whether the function level needs one.
fn prescan(body: &FunctionBody<'_>) -> Result<(Vec<Plan>, bool), String> {
    let mut plans: Vec<Plan> = Vec::new();
    // Open constructs: (ordinal, in a handler). The function level is not on this stack.
    let mut stack: Vec<(usize, bool)> = Vec::new();
    let mut targets: Vec<(Option<usize>, bool)> = Vec::new();
    let mut reader = body.get_operators_reader().map_err(|e| e.to_string())?;
    while !reader.eof() {
        let op = reader.read().map_err(|e| e.to_string())?;
        match op {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. } => {
                if stack.len() >= CONTROL_DEPTH_MAX {
                    return Err(format!("more than {CONTROL_DEPTH_MAX} nested blocks"));
                }
                stack.push((plans.len(), false));
                plans.push(Plan {
                    is_try: matches!(op, Operator::Try { .. }),
                    is_try_table: matches!(op, Operator::TryTable { .. }),
                    ..Plan::default()
                });
            }
            Operator::Catch { tag_index } => {
                let top = stack.last_mut().ok_or("catch outside a try")?;
                top.1 = true;
                plans[top.0].clauses.push(Some(tag_index));
            }
            Operator::CatchAll => {
                let top = stack.last_mut().ok_or("catch_all outside a try")?;
                top.1 = true;
                plans[top.0].clauses.push(None);
            }
            Operator::Delegate { relative_depth } => {
                let (ordinal, _) = stack.pop().ok_or("delegate outside a try")?;
                let depth = relative_depth as usize;
                let target = match depth.cmp(&stack.len()) {
                    std::cmp::Ordering::Less => {
                        let (target, in_handler) = stack[stack.len() - 1 - depth];
                        (Some(target), !in_handler && plans[target].is_try)
                    }
                    std::cmp::Ordering::Equal => (None, false),
                    std::cmp::Ordering::Greater => {
                        return Err(format!("delegate {relative_depth}: no such label"));
                    }
                };
                plans[ordinal].delegate = Some(target);
                targets.push(target);
            }
            Operator::End => {
                stack.pop();
            }
            _ => {}
        }
    }
    let mut function_land = false;
    for (target, in_body) in targets {
        match target {
            None => function_land = true,
            Some(t) if plans[t].is_try_table => {
                return Err("delegate to a try_table label is not supported".into());
            }
            Some(t) if in_body && plans[t].handles() => plans[t].inner_land = true,
            Some(t) => plans[t].outer_land = true,
        }
    }
    Ok((plans, function_land))
}

/// What a construct is, once translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `block`, `loop`, `if`, `try_table`, or a legacy `try` with no handlers (a block).
    Plain,
    /// A legacy try with `catch`/`catch_all` clauses.
    TryCatch,
    /// A legacy try ending in `delegate`.
    TryDelegate,
    /// The function body.
    Function,
}

/// One open construct of the original function, and where its labels went.
#[derive(Debug, Clone)]
struct Frame {
    kind: Kind,
    ordinal: Option<usize>,
    /// Absolute (new) label a `br` to this construct targets.
    target: usize,
    /// Landing pad inside the body (a try with handlers targeted by a delegate from its body).
    inner_land: Option<usize>,
    /// Landing pad right after the construct: (the `$x` block, the `$land` block).
    outer_land: Option<(usize, usize)>,
    /// A legacy try in one of its handlers.
    in_handler: bool,
    /// Handler blocks not yet closed (TryCatch).
    clauses_left: usize,
    /// The `exnref` local of a TryCatch.
    exn_local: Option<u32>,
}

struct Translator<'a> {
    info: &'a ModuleInfo,
    registry: &'a mut TypeRegistry,
    plans: Vec<Plan>,
    next_ordinal: usize,
    /// The translated body's instructions, encoded.
    out: Vec<u8>,
    /// Labels open in the output, the function level included.
    labels: usize,
    frames: Vec<Frame>,
    exn_local_first: u32,
    exn_locals: u32,
}

fn translate_body(
    info: &ModuleInfo,
    registry: &mut TypeRegistry,
    signature: &Signature,
    body: &FunctionBody<'_>,
) -> Result<Function, String> {
    let (plans, function_land) = prescan(body)?;
    let mut locals = Vec::new();
    let mut local_count = signature.0.len() as u64;
    for pair in body.get_locals_reader().map_err(|e| e.to_string())? {
        let (count, ty) = pair.map_err(|e| e.to_string())?;
        local_count += u64::from(count);
        let ty = RoundtripReencoder
            .val_type(ty)
            .map_err(|e| format!("value type: {e}"))?;
        locals.push((count, ty));
    }
    let mut t = Translator {
        info,
        registry,
        plans,
        next_ordinal: 0,
        out: Vec::new(),
        labels: 1,
        frames: Vec::new(),
        exn_local_first: u32::try_from(local_count).map_err(|_| "too many locals")?,
        exn_locals: 0,
    };
    let mut function = Frame {
        kind: Kind::Function,
        ordinal: None,
        target: 0,
        inner_land: None,
        outer_land: None,
        in_handler: false,
        clauses_left: 0,
        exn_local: None,
    };
    if function_land {
        function.outer_land = Some(t.open_outer_land(&(vec![], signature.1.clone()))?);
    }
    t.frames.push(function);
    let mut reader = body.get_operators_reader().map_err(|e| e.to_string())?;
    while !reader.eof() {
        let op = reader.read().map_err(|e| e.to_string())?;
        t.operator(op)?;
    }
    if !t.frames.is_empty() {
        return Err("function body does not end".into());
    }
    if t.exn_locals > 0 {
        locals.push((t.exn_locals, wasm_encoder::ValType::EXNREF));
    }
    let mut f = Function::new(locals);
    f.raw(t.out);
    Ok(f)
}

impl Translator<'_> {
    fn emit(&mut self, instruction: Instruction<'_>) {
        instruction.encode(&mut self.out);
    }

    fn open(&mut self, instruction: Instruction<'_>) -> usize {
        let at = self.labels;
        self.emit(instruction);
        self.labels += 1;
        at
    }

    fn close(&mut self) {
        self.emit(Instruction::End);
        self.labels -= 1;
    }

    /// The relative depth of absolute label `at` from the current position.
    fn relative(&self, at: usize) -> u32 {
        debug_assert!(at < self.labels);
        (self.labels - 1 - at) as u32
    }

    fn block(&mut self, signature: Signature) -> Result<BlockType, String> {
        self.registry.block(signature)
    }

    /// Opens `block $x [P]->[R]` and `block $land [P]->[exnref]`; returns (x, land).
    fn open_outer_land(&mut self, signature: &Signature) -> Result<(usize, usize), String> {
        let x = self.block(signature.clone())?;
        let land = self.block((
            signature.0.clone(),
            vec![wasmparser::ValType::Ref(wasmparser::RefType::EXNREF)],
        ))?;
        Ok((
            self.open(Instruction::Block(x)),
            self.open(Instruction::Block(land)),
        ))
    }

    /// After a construct with an outer landing pad has ended: `br $x end throw_ref end`.
    fn close_outer_land(&mut self, (x, _land): (usize, usize)) {
        self.emit(Instruction::Br(self.relative(x)));
        self.close();
        self.emit(Instruction::ThrowRef);
        self.close();
    }

    /// Opens an inner landing pad `block $land [P]->[exnref]`.
    fn open_inner_land(&mut self, params: &[wasmparser::ValType]) -> Result<usize, String> {
        let ty = self.block((
            params.to_vec(),
            vec![wasmparser::ValType::Ref(wasmparser::RefType::EXNREF)],
        ))?;
        Ok(self.open(Instruction::Block(ty)))
    }

    /// Closes an inner landing pad: `br <target> end throw_ref`.
    fn close_inner_land(&mut self, target: usize) {
        self.emit(Instruction::Br(self.relative(target)));
        self.close();
        self.emit(Instruction::ThrowRef);
    }

    fn frame_at(&self, relative_depth: u32) -> Result<&Frame, String> {
        let depth = relative_depth as usize;
        if depth >= self.frames.len() {
            return Err(format!("branch depth {relative_depth}: no such label"));
        }
        Ok(&self.frames[self.frames.len() - 1 - depth])
    }

    /// The new relative depth of a branch to original depth `relative_depth`.
    fn branch(&self, relative_depth: u32) -> Result<u32, String> {
        Ok(self.relative(self.frame_at(relative_depth)?.target))
    }

    fn take_plan(&mut self) -> Result<(usize, Plan), String> {
        let ordinal = self.next_ordinal;
        let plan = self
            .plans
            .get(ordinal)
            .cloned()
            .ok_or("construct missed by the pre-scan")?;
        self.next_ordinal += 1;
        Ok((ordinal, plan))
    }

    fn operator(&mut self, op: Operator<'_>) -> Result<(), String> {
        match op {
            Operator::Block { blockty } => self.open_plain(blockty, &[], Instruction::Block),
            Operator::Loop { blockty } => self.open_plain(blockty, &[], Instruction::Loop),
            Operator::If { blockty } => {
                self.open_plain(blockty, &[wasmparser::ValType::I32], Instruction::If)
            }
            Operator::TryTable { try_table } => self.open_try_table(try_table),
            Operator::Try { blockty } => self.open_try(blockty),
            Operator::Catch { .. } | Operator::CatchAll => self.next_clause(),
            Operator::Delegate { .. } => self.end_delegate(),
            Operator::Rethrow { relative_depth } => {
                let frame = self.frame_at(relative_depth)?;
                let local = match (frame.kind, frame.in_handler, frame.exn_local) {
                    (Kind::TryCatch, true, Some(local)) => local,
                    _ => return Err(format!("rethrow {relative_depth}: not a catch label")),
                };
                self.emit(Instruction::LocalGet(local));
                self.emit(Instruction::ThrowRef);
                Ok(())
            }
            Operator::End => self.end(),
            Operator::Br { relative_depth } => {
                let depth = self.branch(relative_depth)?;
                self.emit(Instruction::Br(depth));
                Ok(())
            }
            Operator::BrIf { relative_depth } => {
                let depth = self.branch(relative_depth)?;
                self.emit(Instruction::BrIf(depth));
                Ok(())
            }
            Operator::BrOnNull { relative_depth } => {
                let depth = self.branch(relative_depth)?;
                self.emit(Instruction::BrOnNull(depth));
                Ok(())
            }
            Operator::BrOnNonNull { relative_depth } => {
                let depth = self.branch(relative_depth)?;
                self.emit(Instruction::BrOnNonNull(depth));
                Ok(())
            }
            Operator::BrTable { targets } => {
                let mut depths = Vec::with_capacity(targets.len() as usize);
                for target in targets.targets() {
                    depths.push(self.branch(target.map_err(|e| e.to_string())?)?);
                }
                let default = self.branch(targets.default())?;
                self.emit(Instruction::BrTable(depths.into(), default));
                Ok(())
            }
            Operator::BrOnCast {
                relative_depth,
                from_ref_type,
                to_ref_type,
            }
            | Operator::BrOnCastFail {
                relative_depth,
                from_ref_type,
                to_ref_type,
            } => {
                let fail = matches!(op, Operator::BrOnCastFail { .. });
                let relative_depth = self.branch(relative_depth)?;
                let mut r = RoundtripReencoder;
                let from_ref_type = r.ref_type(from_ref_type).map_err(|e| e.to_string())?;
                let to_ref_type = r.ref_type(to_ref_type).map_err(|e| e.to_string())?;
                self.emit(if fail {
                    Instruction::BrOnCastFail {
                        relative_depth,
                        from_ref_type,
                        to_ref_type,
                    }
                } else {
                    Instruction::BrOnCast {
                        relative_depth,
                        from_ref_type,
                        to_ref_type,
                    }
                });
                Ok(())
            }
            other => {
                let instruction = RoundtripReencoder
                    .instruction(other)
                    .map_err(|e| format!("re-encoding an instruction: {e}"))?;
                self.emit(instruction);
                Ok(())
            }
        }
    }

    fn new_frame(&self, kind: Kind, ordinal: usize, target: usize) -> Frame {
        Frame {
            kind,
            ordinal: Some(ordinal),
            target,
            inner_land: None,
            outer_land: None,
            in_handler: false,
            clauses_left: 0,
            exn_local: None,
        }
    }

    /// `block`, `loop`, `if`, or a legacy try without handlers (as a block).
    fn open_plain(
        &mut self,
        blockty: wasmparser::BlockType,
        extra_params: &[wasmparser::ValType],
        make: fn(BlockType) -> Instruction<'static>,
    ) -> Result<(), String> {
        let (ordinal, plan) = self.take_plan()?;
        let signature = self.info.block_signature(blockty)?;
        let outer_land = if plan.outer_land {
            let mut params = signature.0.clone();
            params.extend_from_slice(extra_params);
            Some(self.open_outer_land(&(params, signature.1.clone()))?)
        } else {
            None
        };
        let ty = RoundtripReencoder
            .block_type(blockty)
            .map_err(|e| e.to_string())?;
        let target = self.open(make(ty));
        let mut frame = self.new_frame(Kind::Plain, ordinal, target);
        frame.outer_land = outer_land;
        self.push_frame(frame)
    }

    fn push_frame(&mut self, frame: Frame) -> Result<(), String> {
        // The function's own frame is at the bottom and is not a nested block.
        if self.frames.len() > CONTROL_DEPTH_MAX {
            return Err(format!("more than {CONTROL_DEPTH_MAX} nested blocks"));
        }
        self.frames.push(frame);
        Ok(())
    }

    fn open_try_table(&mut self, try_table: wasmparser::TryTable) -> Result<(), String> {
        let (ordinal, plan) = self.take_plan()?;
        let signature = self.info.block_signature(try_table.ty)?;
        let outer_land = if plan.outer_land {
            Some(self.open_outer_land(&signature)?)
        } else {
            None
        };
        // Catch labels are relative to the context outside the try_table.
        let mut catches = Vec::with_capacity(try_table.catches.len());
        for catch in try_table.catches {
            catches.push(match catch {
                wasmparser::Catch::One { tag, label } => Catch::One {
                    tag,
                    label: self.branch(label)?,
                },
                wasmparser::Catch::OneRef { tag, label } => Catch::OneRef {
                    tag,
                    label: self.branch(label)?,
                },
                wasmparser::Catch::All { label } => Catch::All {
                    label: self.branch(label)?,
                },
                wasmparser::Catch::AllRef { label } => Catch::AllRef {
                    label: self.branch(label)?,
                },
            });
        }
        let ty = RoundtripReencoder
            .block_type(try_table.ty)
            .map_err(|e| e.to_string())?;
        let target = self.open(Instruction::TryTable(ty, catches.into()));
        let mut frame = self.new_frame(Kind::Plain, ordinal, target);
        frame.outer_land = outer_land;
        self.push_frame(frame)
    }

    fn open_try(&mut self, blockty: wasmparser::BlockType) -> Result<(), String> {
        let plan = self
            .plans
            .get(self.next_ordinal)
            .cloned()
            .ok_or("construct missed by the pre-scan")?;
        if !plan.handles() {
            return self.open_plain(blockty, &[], Instruction::Block);
        }
        let (ordinal, plan) = self.take_plan()?;
        let signature = self.info.block_signature(blockty)?;
        let outer_land = if plan.outer_land {
            Some(self.open_outer_land(&signature)?)
        } else {
            None
        };
        let exnref = wasmparser::ValType::Ref(wasmparser::RefType::EXNREF);
        let tt = self.block(signature.clone())?;
        let mut frame = if let Some((target, _)) = plan.delegate {
            // try ... delegate: one try_table whose catch_all_ref goes to the target's pad.
            let land = self.delegate_landing(target)?;
            let catches = vec![Catch::AllRef {
                label: self.relative(land),
            }];
            let at = self.open(Instruction::TryTable(tt, catches.into()));
            self.new_frame(Kind::TryDelegate, ordinal, at)
        } else {
            let outer = self.open(Instruction::Block(tt));
            // Handler blocks: the last clause outermost, the first right around the try_table.
            let mut handlers = vec![0; plan.clauses.len()];
            for (k, clause) in plan.clauses.iter().enumerate().rev() {
                let mut results = match clause {
                    Some(tag) => self.info.tag_params(*tag)?,
                    None => vec![],
                };
                results.push(exnref);
                let ty = self.block((signature.0.clone(), results))?;
                handlers[k] = self.open(Instruction::Block(ty));
            }
            let catches = plan
                .clauses
                .iter()
                .zip(&handlers)
                .map(|(clause, at)| match clause {
                    Some(tag) => Catch::OneRef {
                        tag: *tag,
                        label: self.relative(*at),
                    },
                    None => Catch::AllRef {
                        label: self.relative(*at),
                    },
                })
                .collect::<Vec<_>>();
            self.open(Instruction::TryTable(tt, catches.into()));
            let depth = self
                .frames
                .iter()
                .filter(|f| f.kind == Kind::TryCatch)
                .count() as u32;
            self.exn_locals = self.exn_locals.max(depth + 1);
            let mut frame = self.new_frame(Kind::TryCatch, ordinal, outer);
            frame.clauses_left = plan.clauses.len();
            frame.exn_local = Some(self.exn_local_first + depth);
            frame
        };
        frame.outer_land = outer_land;
        if plan.inner_land {
            frame.inner_land = Some(self.open_inner_land(&signature.0)?);
        }
        self.push_frame(frame)
    }

    /// The landing pad of a delegate whose target is `target` (an ordinal, `None`: function).
    fn delegate_landing(&self, target: Option<usize>) -> Result<usize, String> {
        let frame = self
            .frames
            .iter()
            .rev()
            .find(|f| f.ordinal == target)
            .ok_or("delegate target is not open")?;
        let inner = frame.inner_land.filter(|_| !frame.in_handler);
        inner
            .or(frame.outer_land.map(|(_, land)| land))
            .ok_or_else(|| "delegate target has no landing pad".into())
    }

    /// `catch` or `catch_all`: close the body (first clause) or the previous handler.
    fn next_clause(&mut self) -> Result<(), String> {
        let frame = self.frames.last().cloned().ok_or("catch outside a try")?;
        if frame.kind != Kind::TryCatch || frame.clauses_left == 0 {
            return Err("catch outside a try".into());
        }
        if !frame.in_handler {
            if let Some(land) = frame.inner_land {
                self.close_inner_land(frame.target);
                debug_assert_eq!(land, self.labels);
            }
            self.close(); // try_table
        }
        self.emit(Instruction::Br(self.relative(frame.target)));
        self.close(); // this clause's handler block
        self.emit(Instruction::LocalSet(
            frame.exn_local.expect("a TryCatch has an exnref local"),
        ));
        let top = self.frames.last_mut().expect("checked above");
        top.in_handler = true;
        top.clauses_left -= 1;
        Ok(())
    }

    fn end_delegate(&mut self) -> Result<(), String> {
        let frame = self.frames.pop().ok_or("delegate outside a try")?;
        if frame.kind != Kind::TryDelegate {
            return Err("delegate outside a try".into());
        }
        if frame.inner_land.is_some() {
            self.close_inner_land(frame.target);
        }
        self.close(); // try_table
        if let Some(land) = frame.outer_land {
            self.close_outer_land(land);
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), String> {
        let frame = self.frames.pop().ok_or("end without a block")?;
        match frame.kind {
            Kind::Plain => self.close(),
            Kind::TryCatch => {
                if !frame.in_handler || frame.clauses_left != 0 {
                    return Err("try ended before all its clauses".into());
                }
                self.close(); // $outer
            }
            Kind::TryDelegate => return Err("try ... delegate ended with end".into()),
            Kind::Function => {
                if let Some(land) = frame.outer_land {
                    self.close_outer_land(land);
                }
                // The function's own end.
                self.emit(Instruction::End);
                self.labels -= 1;
                return Ok(());
            }
        }
        if let Some(land) = frame.outer_land {
            self.close_outer_land(land);
        }
        Ok(())
    }
}

/// The second pass: the module re-encoded with the added types, the translated bodies and the
/// added exports; everything else as it was.
struct Rewriter<'a> {
    registry: &'a TypeRegistry,
    bodies: Vec<Function>,
    exports: &'a [(u32, String)],
    saw_types: bool,
}

impl Reencode for Rewriter<'_> {
    type Error = String;

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<String>> {
        wasm_encoder::reencode::utils::parse_type_section(self, types, section)?;
        for (params, results) in &self.registry.added {
            let convert = |list: &[wasmparser::ValType]| {
                list.iter()
                    .map(|t| RoundtripReencoder.val_type(*t))
                    .collect::<Result<Vec<_>, _>>()
            };
            let params = convert(params).map_err(|e| user(e.to_string()))?;
            let results = convert(results).map_err(|e| user(e.to_string()))?;
            types.ty().function(params, results);
        }
        self.saw_types = true;
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<String>> {
        if section.count() as usize != self.bodies.len() {
            return Err(user("code section changed between passes".into()));
        }
        for body in &self.bodies {
            code.function(body);
        }
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<String>> {
        wasm_encoder::reencode::utils::parse_export_section(self, exports, section)?;
        for (index, name) in self.exports {
            exports.export(name, ExportKind::Global, *index);
        }
        Ok(())
    }
}

fn user(text: String) -> wasm_encoder::reencode::Error<String> {
    wasm_encoder::reencode::Error::UserError(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Config, Engine, Instance, Module, Store, Val};

    const WAT: &str = include_str!("../../../tests/wasm/legacy_eh.wat");

    fn engine() -> Engine {
        let mut config = Config::new();
        config.wasm_exceptions(true);
        Engine::new(&config).unwrap()
    }

    fn translated() -> (Store<()>, Instance) {
        let legacy = wat::parse_str(WAT).unwrap();
        assert!(uses_legacy(&legacy).unwrap());
        let wasm = rewrite(&legacy, &Rewrite::default()).unwrap();
        assert!(!uses_legacy(&wasm).unwrap());
        let engine = engine();
        let module = Module::new(&engine, &wasm).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = Instance::new(&mut store, &module, &[]).unwrap();
        (store, instance)
    }

    /// Calls export `name` with i32 arguments; the single result as i64, or Err when an
    /// exception (or trap) escaped.
    fn call(
        store: &mut Store<()>,
        instance: &Instance,
        name: &str,
        args: &[i32],
    ) -> Result<i64, String> {
        let func = instance.get_func(&mut *store, name).expect(name);
        let params: Vec<Val> = args.iter().map(|a| Val::I32(*a)).collect();
        let mut results = [Val::I32(0)];
        func.call(&mut *store, &params, &mut results)
            .map_err(|e| format!("{e:#}"))?;
        Ok(match results[0] {
            Val::I32(v) => i64::from(v),
            Val::I64(v) => v,
            ref other => panic!("{name}: unexpected result {other:?}"),
        })
    }

    #[test]
    fn wasmtime_rejects_the_legacy_module() {
        let legacy = wat::parse_str(WAT).unwrap();
        assert!(Module::new(&engine(), &legacy).is_err());
    }

    #[test]
    fn translated_module_keeps_legacy_semantics() {
        let (mut store, instance) = translated();
        let mut check = |name: &str, args: &[i32], expected: i64| {
            assert_eq!(
                call(&mut store, &instance, name, args),
                Ok(expected),
                "{name}({args:?})"
            );
        };
        check("catch-value", &[41], 42);
        check("catch-multi", &[], 7);
        check("br-table", &[0], 10);
        check("br-table", &[1], 20);
        check("br-table", &[2], 30);
        check("clauses-throw", &[0], 0);
        check("clauses-throw", &[1], 1);
        check("clauses-throw", &[2], 22);
        check("clauses-throw", &[3], 3);
        check("nested-miss", &[], 42);
        check("rethrow-depth", &[], 105);
        check("rethrow-zero", &[], 7);
        check("rethrow-in-block", &[], 9);
        check("branch-out", &[0], 3);
        check("branch-out", &[1], 4);
        check("delegate-throw", &[0], 1);
        check("delegate-throw", &[1], 2);
        check("delegate-skip", &[], 3);
        check("delegate-to-block", &[], 1);
        check("delegate-to-catch", &[], 1);
        check("delegate-to-loop", &[], 11);
        check("delegate-to-if", &[1], 6);
        check("delegate-to-if", &[0], 51);
        check("delegate-chain", &[], 8);
        check("try-param", &[], 12);
        check("try-plain", &[], 4);
        check("from-callee", &[], 13);
    }

    #[test]
    fn exceptions_that_escape_still_escape() {
        let (mut store, instance) = translated();
        for name in [
            "delegate-to-caller",
            "delegate-to-caller-skipping",
            "uncaught",
        ] {
            assert!(call(&mut store, &instance, name, &[]).is_err(), "{name}");
        }
    }

    #[test]
    fn modules_without_legacy_opcodes_are_untouched_by_the_check() {
        let wasm =
            wat::parse_str("(module (func (export \"f\") (result i32) (i32.const 1)))").unwrap();
        assert!(!uses_legacy(&wasm).unwrap());
        // A rewrite without legacy opcodes only re-encodes, and adds the requested exports.
        let with_global = wat::parse_str(
            "(module (global (mut i64) (i64.const 5)) (func (export \"f\") (result i32) (i32.const 1)))",
        )
        .unwrap();
        let spec = Rewrite {
            export_globals: vec![(0, "g".into())],
        };
        let out = rewrite(&with_global, &spec).unwrap();
        let engine = engine();
        let module = Module::new(&engine, &out).unwrap();
        assert!(module.exports().any(|e| e.name() == "g"));
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        // rethrow to a label that is not a catch is invalid in the legacy spec.
        let bad = wat::parse_str("(module (tag $e) (func block try rethrow 1 catch_all end end))");
        if let Ok(bad) = bad {
            assert!(rewrite(&bad, &Rewrite::default()).is_err());
        }
        assert!(rewrite(b"\0asm\x01\0\0\0\x01", &Rewrite::default()).is_err());
    }

    /// A module whose one function nests `depth` blocks, a legacy `try` innermost.
    fn nested(depth: usize) -> Vec<u8> {
        use wasm_encoder::{CodeSection, FunctionSection, TypeSection};
        let mut types = TypeSection::new();
        types.ty().function([], []);
        let mut functions = FunctionSection::new();
        functions.function(0);
        let mut body = Function::new([]);
        for _ in 0..depth - 1 {
            body.instruction(&Instruction::Block(BlockType::Empty));
        }
        body.instruction(&Instruction::Try(BlockType::Empty));
        body.instruction(&Instruction::CatchAll);
        for _ in 0..depth {
            body.instruction(&Instruction::End);
        }
        body.instruction(&Instruction::End);
        let mut code = CodeSection::new();
        code.function(&body);
        let mut module = wasm_encoder::Module::new();
        module.section(&types).section(&functions).section(&code);
        module.finish()
    }

    #[test]
    fn nesting_past_control_depth_max_is_refused() {
        let at = nested(CONTROL_DEPTH_MAX);
        assert!(uses_legacy(&at).unwrap());
        let wasm = rewrite(&at, &Rewrite::default()).expect("CONTROL_DEPTH_MAX blocks translate");
        assert!(!uses_legacy(&wasm).unwrap());
        let over = rewrite(&nested(CONTROL_DEPTH_MAX + 1), &Rewrite::default());
        assert_eq!(
            over.unwrap_err(),
            format!("function 0: more than {CONTROL_DEPTH_MAX} nested blocks")
        );
    }
}
