//! The AWS SAM template as the emulator's single source of truth: which
//! functions exist, their timeouts, memory, environment, HTTP routes,
//! schedules and stream sources.
//!
//! Only what the emulator can act on is read; everything else is either
//! ignored (other resources, which the local stores stand in for) or reported
//! (`ignored_events`, `unresolved_environment`, `Template::not_emulated`:
//! function properties such as `Tracing` or `Layers`) so the banner can say
//! what will not happen locally. CloudFormation intrinsics are resolved only where the answer is
//! known without AWS (`Ref`/`Sub` to parameters with a value, pseudo
//! parameters); this module never guesses a value it cannot know.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use yaml_serde::{Mapping, Value};

use crate::schedule::ScheduleExpression;

/// Lambda's defaults when neither the function nor `Globals` says.
const DEFAULT_TIMEOUT_SECS: u64 = 3;
const DEFAULT_MEMORY_MB: u32 = 128;

/// The environment variables that configure a stream source like an event
/// source mapping.
const STREAM_SETTINGS: [&str; 8] = [
    "BATCH_SIZE",
    "MAXIMUM_BATCHING_WINDOW_IN_SECONDS",
    "MAXIMUM_RETRY_ATTEMPTS",
    "MAXIMUM_RECORD_AGE_IN_SECONDS",
    "BISECT_BATCH_ON_FUNCTION_ERROR",
    "PARALLELIZATION_FACTOR",
    "STARTING_POSITION",
    "VISIBILITY_TIMEOUT_SECONDS",
];

mod http_api;

use http_api::Conditions;
pub use http_api::{CorsSpec, HttpApiSpec, JwtAuthorizerSpec, RouteAuthSpec, Throttle};

/// A route's `ApiId` names an HttpApi of the template, and its authorizer one of
/// that API's.
fn check_route_auth(
    function: &str,
    route: &HttpRoute,
    apis: &BTreeMap<String, HttpApiSpec>,
) -> anyhow::Result<()> {
    let at = format!("{function}: Events.{}", route.event);
    let Some(api) = &route.auth.api else {
        if route
            .auth
            .authorizer
            .as_deref()
            .is_some_and(|a| a != "NONE")
        {
            bail!("{at}: an authorizer needs ApiId (an AWS::Serverless::HttpApi of the template)");
        }
        return Ok(());
    };
    let spec = apis
        .get(api)
        .ok_or_else(|| anyhow!("{at}: ApiId: no AWS::Serverless::HttpApi named {api}"))?;
    let authorizer = route
        .auth
        .authorizer
        .as_deref()
        .or(spec.default_authorizer.as_deref());
    if let Some(name) = authorizer.filter(|a| *a != "NONE") {
        if !spec.authorizers.contains_key(name) {
            bail!("{at}: no authorizer {name} in {api}.Auth.Authorizers");
        }
    }
    Ok(())
}

/// The resource a `!Ref X`, `!Ref X.Alias`, `!GetAtt X.Arn` or their long
/// forms name.
fn referenced_resource(value: &Value) -> Option<&str> {
    let target = match value {
        Value::Tagged(tagged) if tagged.tag == "Ref" || tagged.tag == "GetAtt" => {
            tagged.value.as_str()
        }
        Value::Mapping(m) => match (m.get("Ref"), m.get("Fn::GetAtt")) {
            (Some(r), _) => r.as_str(),
            (None, Some(Value::Sequence(parts))) => parts.first().and_then(Value::as_str),
            (None, Some(other)) => other.as_str(),
            (None, None) => None,
        },
        _ => None,
    }?;
    Some(target.split('.').next().unwrap_or(target))
}

/// The variable that names a relay's outboxes; a function that has it is
/// woken when outbox rows commit.
pub const RELAY_OUTBOXES: &str = "RELAY_OUTBOXES";

/// The functions of a SAM template, as the emulator runs them.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// The `AWS::Serverless::Function` resources, in template order.
    pub functions: Vec<FunctionSpec>,
    /// Every template parameter with the value used to resolve intrinsics:
    /// the override given to [`parse_with_parameters`] if any, else its
    /// `Default`, else `None`.
    pub parameters: BTreeMap<String, Option<String>>,
    /// The `AWS::Serverless::HttpApi` resources by logical id: authorizers,
    /// throttling, CORS.
    pub http_apis: BTreeMap<String, HttpApiSpec>,
    /// Function properties the emulator does not act on, each with where it is
    /// set (`Globals` or function logical ids), by property name.
    pub not_emulated: BTreeMap<String, Vec<String>>,
}

/// The function properties the emulator acts on, and those that only say how
/// to build (cargo builds locally): neither is reported as not emulated.
const EMULATED_PROPERTIES: [&str; 11] = [
    "Timeout",
    "MemorySize",
    "ReservedConcurrentExecutions",
    "Environment",
    "Events",
    "Description",
    "Runtime",
    "Handler",
    "CodeUri",
    "Architectures",
    "PackageType",
];

/// What leaving out a function property means locally.
fn not_emulated_note(property: &str) -> &'static str {
    match property {
        "Tracing" => "no X-Ray segments (trace ids are still carried from hop to hop)",
        "VpcConfig" => "no network isolation: functions reach the local stores directly",
        "LoggingConfig" => "logs go to the emulator's output (see --log-format)",
        "AutoPublishAlias" | "VersionDescription" | "DeploymentPreference" => {
            "no versions or aliases: $LATEST runs"
        }
        "Policies" | "Role" | "PermissionsBoundary" => "no IAM: every call is allowed",
        "Layers" => "no layers: the binary must carry what it needs",
        "DeadLetterQueue" | "EventInvokeConfig" => {
            "no asynchronous invocation settings (destinations, retries)"
        }
        "ProvisionedConcurrencyConfig" | "SnapStart" => "every instance starts cold",
        "EphemeralStorage" => "/tmp is the machine's",
        "FunctionUrlConfig" => "no function URL: use the HTTP API or the Invoke API",
        _ => "ignored",
    }
}

/// A property of `at` (`Globals` or a function) that the emulator ignores.
fn note_not_emulated(
    not_emulated: &mut BTreeMap<String, Vec<String>>,
    properties: &Mapping,
    at: &str,
) {
    for key in properties.keys().filter_map(Value::as_str) {
        if !EMULATED_PROPERTIES.contains(&key) {
            not_emulated
                .entry(key.to_owned())
                .or_default()
                .push(at.to_owned());
        }
    }
}

impl Template {
    /// The outboxes the template's relays drain: every function's
    /// `RELAY_OUTBOXES`, each outbox once, in template order.
    pub fn relay_outboxes(&self) -> anyhow::Result<Vec<shared::outbox::Outbox>> {
        let mut outboxes = Vec::new();
        for f in &self.functions {
            let Some(list) = f.environment.get(RELAY_OUTBOXES) else {
                continue;
            };
            let env = shared::config::Env::from_pairs([(RELAY_OUTBOXES, list.as_str())]);
            let options = shared::relay::RelayOptions::from_env(&env)
                .with_context(|| format!("{}: {RELAY_OUTBOXES}", f.logical_id))?;
            for o in options.outboxes {
                if !outboxes.contains(&o) {
                    outboxes.push(o);
                }
            }
        }
        Ok(outboxes)
    }

    /// One line per function property the emulator ignores: the property,
    /// where it is set, and what that means locally.
    pub fn not_emulated_lines(&self) -> Vec<String> {
        self.not_emulated
            .iter()
            .map(|(property, at)| {
                format!(
                    "{property} ({}): {}",
                    at.join(", "),
                    not_emulated_note(property)
                )
            })
            .collect()
    }

    /// The function with this logical id or binary name.
    pub fn function(&self, name: &str) -> Option<&FunctionSpec> {
        self.functions
            .iter()
            .find(|f| f.logical_id == name)
            .or_else(|| self.functions.iter().find(|f| f.binary == name))
    }
}

/// One `AWS::Serverless::Function`.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// The resource's logical id, e.g. `CreateOrderFunction`.
    pub logical_id: String,
    /// `Metadata.BuildProperties.Binary`, else the logical id in kebab-case
    /// without a trailing `Function` (`CreateOrderFunction` → `create-order`).
    pub binary: String,
    pub description: Option<String>,
    /// `Timeout`, else `Globals.Function.Timeout`, else 3 s.
    pub timeout: Duration,
    /// `MemorySize`, else `Globals.Function.MemorySize`, else 128.
    pub memory_mb: u32,
    /// `ReservedConcurrentExecutions`, else the `Globals` one.
    pub reserved_concurrency: Option<u32>,
    /// `Globals.Function.Environment.Variables` merged with the function's
    /// (the function wins), resolved; unresolvable ones are left out.
    pub environment: BTreeMap<String, String>,
    /// Variables whose value cannot be known locally (a parameter without a
    /// value, `!GetAtt`, `{{resolve:...}}`, other intrinsics), sorted.
    pub unresolved_environment: Vec<String>,
    pub http_routes: Vec<HttpRoute>,
    pub schedules: Vec<ScheduleSpec>,
    /// Events the emulator does not deliver, as `Name (Type)`.
    pub ignored_events: Vec<String>,
    /// The custom resources (`AWS::CloudFormation::CustomResource`,
    /// `Custom::*`) whose `ServiceToken` is this function, by logical id.
    pub custom_resources: Vec<String>,
}

impl FunctionSpec {
    /// A relay: its environment names outboxes ([`RELAY_OUTBOXES`]), and the
    /// emulator wakes it when their rows commit.
    pub fn is_relay(&self) -> bool {
        self.environment.contains_key(RELAY_OUTBOXES)
    }
}

/// An `HttpApi` event: a route of the HTTP API.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRoute {
    /// The event's name in the template, e.g. `Orders`.
    pub event: String,
    /// Upper-case; `ANY` matches every method.
    pub method: String,
    /// E.g. `/orders/{id}`.
    pub path: String,
    /// `ApiId`, `Auth` and `RouteSettings`.
    pub auth: RouteAuthSpec,
}

/// A `Schedule` event: an EventBridge rule that invokes the function.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    /// The event's name in the template, e.g. `EveryMinute`.
    pub event: String,
    /// The rule's name: the event's `Name`, else SAM's logical id for the
    /// rule (`<function logical id><event name>`). It goes into the
    /// payload's `resources`.
    pub rule_name: String,
    pub expression: ScheduleExpression,
    /// `Enabled: false` or `State: DISABLED` turn the schedule off.
    pub enabled: bool,
    /// `Input`, a JSON string: sent instead of the Scheduled Event.
    pub input: Option<serde_json::Value>,
    pub description: Option<String>,
}

/// A function that reads Redis Streams (its environment has `STREAM_SOURCE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSourceSpec {
    /// From `STREAM_SOURCE`, comma-separated, e.g. `Order,Reservation`.
    pub aggregate_types: Vec<String>,
    /// `CONSUMER_GROUP`, else the binary name.
    pub group: String,
    /// `STREAM_NAMESPACE`, else `events`.
    pub namespace: String,
    /// `STREAM_PARTITIONS`, else 1.
    pub partitions: u16,
    /// The event source mapping variables present (`BATCH_SIZE`, ...), as
    /// written; they are parsed where they are used.
    pub settings: BTreeMap<String, String>,
}

impl FunctionSpec {
    /// The function's stream source, if its environment declares one.
    pub fn stream_source(&self) -> Option<StreamSourceSpec> {
        let aggregate_types = aggregate_types(self.environment.get("STREAM_SOURCE")?);
        if aggregate_types.is_empty() {
            return None;
        }
        let env = |name: &str| self.environment.get(name).cloned();
        Some(StreamSourceSpec {
            aggregate_types,
            group: env("CONSUMER_GROUP").unwrap_or_else(|| self.binary.clone()),
            namespace: env("STREAM_NAMESPACE").unwrap_or_else(|| "events".to_owned()),
            // Checked by `parse` and `apply_env_overrides`; 1 only if the
            // field was edited afterwards.
            partitions: env("STREAM_PARTITIONS")
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(1),
            settings: STREAM_SETTINGS
                .iter()
                .filter_map(|&name| Some((name.to_owned(), env(name)?)))
                .collect(),
        })
    }
}

fn aggregate_types(source: &str) -> Vec<String> {
    source
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads and parses the template at `path`.
pub fn load(path: &Path) -> anyhow::Result<Template> {
    load_with_parameters(path, &BTreeMap::new())
}

/// [`load`] with parameter values that win over the template's `Default`s,
/// like `sam local --parameter-overrides`.
pub fn load_with_parameters(
    path: &Path,
    overrides: &BTreeMap<String, String>,
) -> anyhow::Result<Template> {
    let yaml = std::fs::read_to_string(path)
        .with_context(|| format!("reading the SAM template {}", path.display()))?;
    // One line, file first: "template.yaml: CreateOrderFunction: ...".
    parse_with_parameters(&yaml, overrides).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

/// Parses a SAM template.
pub fn parse(yaml: &str) -> anyhow::Result<Template> {
    parse_with_parameters(yaml, &BTreeMap::new())
}

/// [`parse`] with parameter values that win over the template's `Default`s.
/// Overriding a parameter the template does not declare is an error.
pub fn parse_with_parameters(
    yaml: &str,
    overrides: &BTreeMap<String, String>,
) -> anyhow::Result<Template> {
    let root: Value = yaml_serde::from_str(yaml).map_err(|e| anyhow!("invalid YAML: {e}"))?;
    let Value::Mapping(root) = root else {
        bail!("the template is not a YAML mapping");
    };

    let parameters = parameters(mapping(root.get("Parameters"), "Parameters")?, overrides)?;
    let conditions = mapping(root.get("Conditions"), "Conditions")?;
    let resolver = Resolver {
        parameters: &parameters,
        conditions,
    };
    let globals = mapping(
        mapping(root.get("Globals"), "Globals")?.and_then(|g| g.get("Function")),
        "Globals.Function",
    )?;
    let mut not_emulated = BTreeMap::new();
    if let Some(globals) = globals {
        note_not_emulated(&mut not_emulated, globals, "Globals");
    }
    let globals = Defaults::read(globals, &resolver)?;

    let resources = mapping(root.get("Resources"), "Resources")?
        .ok_or_else(|| anyhow!("the template has no Resources"))?;
    let mut functions = Vec::new();
    for (id, resource) in resources {
        let id = id
            .as_str()
            .ok_or_else(|| anyhow!("Resources: a resource name is not a string"))?;
        let resource =
            mapping(Some(resource), id)?.ok_or_else(|| anyhow!("{id}: the resource is empty"))?;
        if resource.get("Type").and_then(Value::as_str) != Some("AWS::Serverless::Function") {
            continue;
        }
        let function = function(id, resource, &globals, &resolver)?;
        check_stream_variables(&function)?;
        if let Some(properties) = resource.get("Properties").and_then(Value::as_mapping) {
            note_not_emulated(&mut not_emulated, properties, id);
        }
        functions.push(function);
    }
    for (id, resource) in resources {
        let (Some(id), Some(resource)) = (id.as_str(), resource.as_mapping()) else {
            continue;
        };
        let kind = resource.get("Type").and_then(Value::as_str).unwrap_or("");
        if kind != "AWS::CloudFormation::CustomResource" && !kind.starts_with("Custom::") {
            continue;
        }
        let token = resource
            .get("Properties")
            .and_then(|p| p.get("ServiceToken"))
            .and_then(referenced_resource);
        if let Some(f) = functions
            .iter_mut()
            .find(|f| Some(f.logical_id.as_str()) == token)
        {
            f.custom_resources.push(id.to_owned());
        }
    }
    let http_apis = http_api::http_apis(resources, &Conditions::of(&resolver))?;
    for function in &functions {
        for route in &function.http_routes {
            check_route_auth(&function.logical_id, route, &http_apis)?;
        }
    }
    Ok(Template {
        functions,
        parameters,
        http_apis,
        not_emulated,
    })
}

/// Applies a dotenv file (`--env-file`: `NAME=value` lines, `#` comments,
/// quoting and `export` as dotenv tools read them) to every function, as the
/// `"Parameters"` of an env-vars file would; an error names the line.
pub fn apply_env_file(template: &mut Template, text: &str) -> anyhow::Result<()> {
    let mut variables = serde_json::Map::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        let (name, value) = item.map_err(|e| anyhow!("{e}"))?;
        variables.insert(name, serde_json::Value::String(value));
    }
    let overrides = serde_json::json!({ "Parameters": variables });
    apply_env_overrides(template, &overrides.to_string())
}

/// Applies an environment overrides file (like `sam local invoke --env-vars`):
/// a JSON object whose keys are function logical ids or binary names mapping
/// to `{"VAR": value}`, plus an optional `"Parameters"` object applied to
/// every function first. Unlike SAM, variables the template does not declare
/// are added.
pub fn apply_env_overrides(template: &mut Template, json: &str) -> anyhow::Result<()> {
    let overrides: serde_json::Value =
        serde_json::from_str(json).map_err(|e| anyhow!("env overrides: invalid JSON: {e}"))?;
    let serde_json::Value::Object(overrides) = overrides else {
        bail!("env overrides: expected a JSON object of function name to {{\"VAR\": value}}");
    };

    // "Parameters" first so that a function's own entry wins.
    let mut ordered: Vec<(&String, &serde_json::Value)> = overrides.iter().collect();
    ordered.sort_by_key(|(name, _)| name.as_str() != "Parameters");

    for (name, variables) in ordered {
        let targets: Vec<usize> = if name == "Parameters" {
            (0..template.functions.len()).collect()
        } else {
            let index = template
                .functions
                .iter()
                .position(|f| &f.logical_id == name)
                .or_else(|| template.functions.iter().position(|f| &f.binary == name))
                .ok_or_else(|| {
                    let known: Vec<&str> = template
                        .functions
                        .iter()
                        .map(|f| f.logical_id.as_str())
                        .collect();
                    anyhow!(
                        "env overrides: no function `{name}` in the template (known: {})",
                        known.join(", ")
                    )
                })?;
            vec![index]
        };
        let serde_json::Value::Object(variables) = variables else {
            bail!("env overrides: {name}: expected an object of variable name to value");
        };
        for (variable, value) in variables {
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => bail!(
                    "env overrides: {name}.{variable}: the value must be a string, number or boolean"
                ),
            };
            for &index in &targets {
                let function = &mut template.functions[index];
                function.environment.insert(variable.clone(), value.clone());
                function.unresolved_environment.retain(|v| v != variable);
            }
        }
    }
    for function in &template.functions {
        check_stream_variables(function).map_err(|e| anyhow!("env overrides: {e:#}"))?;
    }
    Ok(())
}

/// Fails on stream variables the stream engine would reject anyway, so the
/// mistake surfaces at start-up rather than in a worker.
fn check_stream_variables(function: &FunctionSpec) -> anyhow::Result<()> {
    let id = &function.logical_id;
    if let Some(partitions) = function.environment.get("STREAM_PARTITIONS") {
        match partitions.trim().parse::<u16>() {
            Ok(n) if n >= 1 => {}
            _ => bail!(
                "{id}: STREAM_PARTITIONS: expected a whole number 1-65535, got `{partitions}`"
            ),
        }
    }
    if let Some(source) = function.environment.get("STREAM_SOURCE") {
        if aggregate_types(source).is_empty() {
            bail!("{id}: STREAM_SOURCE: expected aggregate types such as `Order,Reservation`, got `{source}`");
        }
    }
    Ok(())
}

/// `Parameters`: name → override, else `Default`.
fn parameters(
    declared: Option<&Mapping>,
    overrides: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let mut parameters = BTreeMap::new();
    for (name, parameter) in declared.into_iter().flatten() {
        let name = name
            .as_str()
            .ok_or_else(|| anyhow!("Parameters: a parameter name is not a string"))?;
        let default = match parameter.get("Default") {
            None | Some(Value::Null) => None,
            Some(value) => Some(plain_scalar(value).ok_or_else(|| {
                anyhow!("Parameters.{name}.Default: expected a string, number or boolean")
            })?),
        };
        parameters.insert(name.to_owned(), default);
    }
    for (name, value) in overrides {
        match parameters.get_mut(name) {
            Some(slot) => *slot = Some(value.clone()),
            None => {
                let known: Vec<&str> = parameters.keys().map(String::as_str).collect();
                bail!(
                    "parameter override {name}: the template has no such parameter (known: {})",
                    known.join(", ")
                );
            }
        }
    }
    Ok(parameters)
}

/// What `Globals.Function` gives every function.
#[derive(Debug, Default)]
struct Defaults<'a> {
    timeout: Option<u64>,
    memory_mb: Option<u32>,
    reserved_concurrency: Option<u32>,
    variables: Vec<(String, &'a Value)>,
}

impl<'a> Defaults<'a> {
    fn read(globals: Option<&'a Mapping>, resolver: &Resolver<'_>) -> anyhow::Result<Self> {
        let Some(globals) = globals else {
            return Ok(Self::default());
        };
        let at = "Globals.Function";
        Ok(Self {
            timeout: whole_number(globals, "Timeout", at, resolver, 1, 900)?,
            memory_mb: whole_number(globals, "MemorySize", at, resolver, 128, 10_240)?.map(to_u32),
            reserved_concurrency: whole_number(
                globals,
                "ReservedConcurrentExecutions",
                at,
                resolver,
                0,
                u64::from(u32::MAX),
            )?
            .map(to_u32),
            variables: variables(globals, at)?,
        })
    }
}

/// Narrows a number already checked to fit.
fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn function(
    id: &str,
    resource: &Mapping,
    globals: &Defaults<'_>,
    resolver: &Resolver<'_>,
) -> anyhow::Result<FunctionSpec> {
    let properties = mapping(resource.get("Properties"), &format!("{id}: Properties"))?;
    let empty = Mapping::new();
    let properties = properties.unwrap_or(&empty);

    let binary = match resource
        .get("Metadata")
        .and_then(|m| m.get("BuildProperties"))
        .and_then(|b| b.get("Binary"))
    {
        None => kebab_binary_name(id),
        Some(Value::String(binary)) if !binary.is_empty() => binary.clone(),
        Some(_) => bail!("{id}: Metadata.BuildProperties.Binary: expected a binary name"),
    };

    let timeout = whole_number(properties, "Timeout", id, resolver, 1, 900)?
        .or(globals.timeout)
        .unwrap_or(DEFAULT_TIMEOUT_SECS);
    let memory_mb = whole_number(properties, "MemorySize", id, resolver, 128, 10_240)?
        .map(to_u32)
        .or(globals.memory_mb)
        .unwrap_or(DEFAULT_MEMORY_MB);
    let reserved_concurrency = whole_number(
        properties,
        "ReservedConcurrentExecutions",
        id,
        resolver,
        0,
        u64::from(u32::MAX),
    )?
    .map(to_u32)
    .or(globals.reserved_concurrency);
    let description = properties
        .get("Description")
        .map(|d| resolver.scalar(d))
        .transpose()
        .map_err(|e| anyhow!("{id}: Description: {e}"))?
        .flatten();

    // Globals first, then the function's own: later entries win.
    let mut merged: BTreeMap<String, &Value> = BTreeMap::new();
    merged.extend(globals.variables.iter().map(|(k, v)| (k.clone(), *v)));
    merged.extend(variables(properties, id)?);
    let mut environment = BTreeMap::new();
    let mut unresolved_environment = Vec::new();
    for (name, value) in merged {
        match resolver
            .scalar(value)
            .map_err(|e| anyhow!("{id}: Environment.Variables.{name}: {e}"))?
        {
            Some(value) => {
                environment.insert(name, value);
            }
            None => unresolved_environment.push(name),
        }
    }

    let mut spec = FunctionSpec {
        logical_id: id.to_owned(),
        binary,
        description,
        timeout: Duration::from_secs(timeout),
        memory_mb,
        reserved_concurrency,
        environment,
        unresolved_environment,
        http_routes: Vec::new(),
        schedules: Vec::new(),
        ignored_events: Vec::new(),
        custom_resources: Vec::new(),
    };
    events(&mut spec, properties, resolver)?;
    Ok(spec)
}

/// Sorts `Events` into routes, schedules and the ignored.
fn events(
    spec: &mut FunctionSpec,
    properties: &Mapping,
    resolver: &Resolver<'_>,
) -> anyhow::Result<()> {
    let id = spec.logical_id.clone();
    let Some(events) = mapping(properties.get("Events"), &format!("{id}: Events"))? else {
        return Ok(());
    };
    for (name, event) in events {
        let name = name
            .as_str()
            .ok_or_else(|| anyhow!("{id}: Events: an event name is not a string"))?;
        let at = format!("{id}: Events.{name}");
        let event =
            mapping(Some(event), &at)?.ok_or_else(|| anyhow!("{at}: the event is empty"))?;
        let kind = event
            .get("Type")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{at}: event without Type"))?;
        let props = mapping(event.get("Properties"), &format!("{at}.Properties"))?;
        match kind {
            "HttpApi" => spec
                .http_routes
                .push(http_route(name, props, &at, resolver)?),
            "Schedule" => spec
                .schedules
                .push(schedule(&id, name, props, &at, resolver)?),
            _ => spec.ignored_events.push(format!("{name} ({kind})")),
        }
    }
    Ok(())
}

const HTTP_METHODS: [&str; 8] = [
    "ANY", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS",
];

fn http_route(
    event: &str,
    props: Option<&Mapping>,
    at: &str,
    resolver: &Resolver<'_>,
) -> anyhow::Result<HttpRoute> {
    // SAM's implicit catch-all API (an HttpApi event without Path and Method)
    // has no local equivalent.
    let field = |name: &str| -> anyhow::Result<String> {
        let value = props
            .and_then(|p| p.get(name))
            .ok_or_else(|| anyhow!("{at}: HttpApi event without {name}"))?;
        resolver
            .scalar(value)
            .map_err(|e| anyhow!("{at}: {name}: {e}"))?
            .ok_or_else(|| anyhow!("{at}: {name}: cannot be resolved locally"))
    };
    let path = field("Path")?;
    let method = field("Method")?.to_ascii_uppercase();
    if !path.starts_with('/') {
        bail!("{at}: Path `{path}` must start with `/`");
    }
    if !HTTP_METHODS.contains(&method.as_str()) {
        bail!(
            "{at}: Method `{method}` is not one of {}",
            HTTP_METHODS.join(", ")
        );
    }
    Ok(HttpRoute {
        event: event.to_owned(),
        method,
        path,
        auth: http_api::route_auth(props, at, &Conditions::of(resolver))?,
    })
}

fn schedule(
    function_id: &str,
    event: &str,
    props: Option<&Mapping>,
    at: &str,
    resolver: &Resolver<'_>,
) -> anyhow::Result<ScheduleSpec> {
    let props = props.ok_or_else(|| anyhow!("{at}: Schedule event without Properties"))?;
    let text = |name: &str| -> anyhow::Result<Option<String>> {
        let Some(value) = props.get(name) else {
            return Ok(None);
        };
        resolver
            .scalar(value)
            .map_err(|e| anyhow!("{at}: {name}: {e}"))?
            .map(Some)
            .ok_or_else(|| anyhow!("{at}: {name}: cannot be resolved locally"))
    };

    let expression =
        text("Schedule")?.ok_or_else(|| anyhow!("{at}: Schedule event without Schedule"))?;
    let expression = ScheduleExpression::parse(&expression).map_err(|e| anyhow!("{at}: {e}"))?;

    let enabled = match (text("Enabled")?, text("State")?) {
        (Some(_), Some(_)) => bail!("{at}: give Enabled or State, not both"),
        (Some(enabled), None) => match enabled.as_str() {
            "true" => true,
            "false" => false,
            _ => bail!("{at}: Enabled: expected true or false, got `{enabled}`"),
        },
        (None, Some(state)) => match state.as_str() {
            "ENABLED" | "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS" => true,
            "DISABLED" => false,
            _ => bail!("{at}: State: expected ENABLED or DISABLED, got `{state}`"),
        },
        (None, None) => true,
    };

    let input = match props.get("Input") {
        None => None,
        Some(Value::Mapping(_) | Value::Sequence(_)) => {
            bail!("{at}: Input: expected a JSON string, not YAML structure")
        }
        Some(_) => {
            let input = text("Input")?.unwrap_or_default();
            Some(
                serde_json::from_str(&input)
                    .map_err(|e| anyhow!("{at}: Input: not valid JSON: {e}"))?,
            )
        }
    };

    Ok(ScheduleSpec {
        event: event.to_owned(),
        rule_name: text("Name")?.unwrap_or_else(|| format!("{function_id}{event}")),
        expression,
        enabled,
        input,
        description: text("Description")?,
    })
}

/// `Environment.Variables` of a function or of `Globals.Function`.
fn variables<'a>(properties: &'a Mapping, at: &str) -> anyhow::Result<Vec<(String, &'a Value)>> {
    let Some(environment) = mapping(properties.get("Environment"), &format!("{at}: Environment"))?
    else {
        return Ok(Vec::new());
    };
    let Some(variables) = mapping(
        environment.get("Variables"),
        &format!("{at}: Environment.Variables"),
    )?
    else {
        return Ok(Vec::new());
    };
    variables
        .iter()
        .map(|(name, value)| {
            let name = plain_scalar(name).ok_or_else(|| {
                anyhow!("{at}: Environment.Variables: a variable name is not a string")
            })?;
            Ok((name, value))
        })
        .collect()
}

/// A whole number property within `min..=max`, possibly given by `!Ref`.
fn whole_number(
    properties: &Mapping,
    name: &str,
    at: &str,
    resolver: &Resolver<'_>,
    min: u64,
    max: u64,
) -> anyhow::Result<Option<u64>> {
    let Some(value) = properties.get(name) else {
        return Ok(None);
    };
    let text = resolver
        .scalar(value)
        .map_err(|e| anyhow!("{at}: {name}: {e}"))?
        .ok_or_else(|| anyhow!("{at}: {name}: cannot be resolved locally"))?;
    match text.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => bail!("{at}: {name}: expected a whole number {min}-{max}, got `{text}`"),
    }
}

/// `value` as a mapping: `None` when absent or null, an error when it is
/// something else.
fn mapping<'a>(value: Option<&'a Value>, what: &str) -> anyhow::Result<Option<&'a Mapping>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Mapping(mapping)) => Ok(Some(mapping)),
        Some(_) => bail!("{what}: expected a mapping"),
    }
}

/// A plain (untagged) string, number or boolean in CloudFormation's string form.
fn plain_scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `CreateOrderFunction` → `create-order`; `HTTPProxyFunction` → `http-proxy`.
fn kebab_binary_name(logical_id: &str) -> String {
    let stem = logical_id
        .strip_suffix("Function")
        .filter(|s| !s.is_empty())
        .unwrap_or(logical_id);
    let chars: Vec<char> = stem.chars().collect();
    let mut out = String::with_capacity(stem.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let previous = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
            if previous.is_ascii_lowercase()
                || previous.is_ascii_digit()
                || (previous.is_ascii_uppercase() && next_is_lower)
            {
                out.push('-');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Resolves the CloudFormation intrinsics whose value is known locally.
#[derive(Debug)]
struct Resolver<'a> {
    parameters: &'a BTreeMap<String, Option<String>>,
    /// `Conditions`, for the properties read through [`Conditions`]. Function
    /// environments do not evaluate them: a branch chosen for AWS (`UseElastiCache`)
    /// is not the local truth.
    conditions: Option<&'a Mapping>,
}

impl Resolver<'_> {
    /// `Ok(Some(text))` when the value is known, `Ok(None)` when only AWS
    /// knows it, `Err` when it is not a valid scalar at all.
    fn scalar(&self, value: &Value) -> Result<Option<String>, String> {
        match value {
            Value::Null => Err("no value".to_owned()),
            Value::String(s) if s.contains("{{resolve:") => Ok(None),
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(plain_scalar(value)),
            Value::Tagged(tagged) => {
                let tag = tagged.tag.to_string();
                self.intrinsic(tag.trim_start_matches('!'), &tagged.value)
            }
            Value::Mapping(m) => match m.iter().next() {
                Some((Value::String(key), arg))
                    if m.len() == 1 && (key == "Ref" || key.starts_with("Fn::")) =>
                {
                    self.intrinsic(key.trim_start_matches("Fn::"), arg)
                }
                _ => Err("expected a string, number or boolean, not a mapping".to_owned()),
            },
            Value::Sequence(_) => {
                Err("expected a string, number or boolean, not a list".to_owned())
            }
        }
    }

    /// `function` without `!`/`Fn::`: `Ref`, `Sub`, `GetAtt`, ...
    fn intrinsic(&self, function: &str, arg: &Value) -> Result<Option<String>, String> {
        match (function, arg) {
            ("Ref", Value::String(name)) => Ok(self.reference(name)),
            ("Ref", _) => Err("Ref needs a name".to_owned()),
            ("Sub", Value::String(text)) => Ok(self.substitute(text, &BTreeMap::new())),
            ("Sub", Value::Sequence(parts)) => match &parts[..] {
                [Value::String(text), Value::Mapping(variables)] => {
                    let mut local = BTreeMap::new();
                    for (name, value) in variables {
                        let name = name
                            .as_str()
                            .ok_or_else(|| "Sub: a variable name is not a string".to_owned())?;
                        local.insert(name.to_owned(), self.scalar(value)?);
                    }
                    Ok(self.substitute(text, &local))
                }
                _ => Err("Sub needs a string or [string, {variables}]".to_owned()),
            },
            // GetAtt, Join, If, ImportValue, ...: only CloudFormation knows.
            _ => Ok(None),
        }
    }

    /// A parameter's or pseudo parameter's value, if known locally.
    fn reference(&self, name: &str) -> Option<String> {
        let pseudo = match name {
            "AWS::Region" => Some("us-east-1"),
            "AWS::AccountId" => Some("000000000000"),
            "AWS::URLSuffix" => Some("amazonaws.com"),
            "AWS::Partition" => Some("aws"),
            "AWS::StackName" => Some("local"),
            _ => None,
        };
        match pseudo {
            Some(value) => Some(value.to_owned()),
            None => self.parameters.get(name).cloned().flatten(),
        }
    }

    /// `Fn::Sub`: every `${Name}` replaced, `${!Literal}` kept as `${Literal}`;
    /// `None` if any name is unknown locally or the result holds a dynamic
    /// reference.
    fn substitute(&self, text: &str, local: &BTreeMap<String, Option<String>>) -> Option<String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                // Unterminated: CloudFormation leaves it as written.
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let name = after[..end].trim();
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else {
                let value = match local.get(name) {
                    Some(value) => value.clone(),
                    None => self.reference(name),
                }?;
                out.push_str(&value);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        (!out.contains("{{resolve:")).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function<'a>(template: &'a Template, id: &str) -> &'a FunctionSpec {
        template
            .functions
            .iter()
            .find(|f| f.logical_id == id)
            .unwrap_or_else(|| panic!("no function {id}"))
    }

    fn error(yaml: &str) -> String {
        format!("{:#}", parse(yaml).expect_err("the template is invalid"))
    }

    /// A function behind a custom resource is recognised whatever the form of
    /// its `ServiceToken`; a relay is a function that names outboxes.
    #[test]
    fn custom_resources_and_relays() {
        let template = parse(
            r#"
Resources:
  Migrate:
    Type: AWS::Serverless::Function
  Seed:
    Type: AWS::Serverless::Function
  Relay:
    Type: AWS::Serverless::Function
    Properties:
      Environment:
        Variables:
          RELAY_OUTBOXES: shop.outbox
  Schema:
    Type: Custom::Schema
    Properties:
      ServiceToken: !Ref Migrate.Alias
  Data:
    Type: AWS::CloudFormation::CustomResource
    Properties:
      ServiceToken: { "Fn::GetAtt": [Seed, Arn] }
  More:
    Type: Custom::More
    Properties:
      ServiceToken: !GetAtt Migrate.Arn
"#,
        )
        .expect("parses");
        assert_eq!(
            function(&template, "Migrate").custom_resources,
            ["Schema", "More"]
        );
        assert_eq!(function(&template, "Seed").custom_resources, ["Data"]);
        assert!(function(&template, "Relay").is_relay());
        assert!(!function(&template, "Seed").is_relay());
        let outboxes: Vec<String> = template
            .relay_outboxes()
            .expect("valid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(outboxes, ["shop.outbox"]);
    }

    const DEPLOYMENT: &str = r#"
Parameters:
  VpcId: { Type: String, Default: "" }
  SubnetIds: { Type: String, Default: "" }
  RedisUrl: { Type: String, Default: "", NoEcho: true }
  NoDefault: { Type: String }
  Namespace: { Type: String, Default: Orders }
Rules:
  SubnetsWithVpc:
    RuleCondition: !Not [!Equals [!Ref VpcId, ""]]
    Assertions:
      - Assert: !Not [!Equals [!Ref SubnetIds, ""]]
Conditions:
  CreateNetwork: !Equals [!Ref VpcId, ""]
  CreateCache: !Equals [!Ref RedisUrl, ""]
Globals:
  Function:
    Tracing: Active
    VpcConfig:
      SecurityGroupIds: [!Ref Sg]
      SubnetIds: !If [CreateNetwork, [!Ref SubnetA], !Split [",", !Ref SubnetIds]]
    Environment:
      Variables:
        METRICS_NAMESPACE: !Ref Namespace
        DATABASE_URL: !Sub
          - "postgres://app@${Host}:5432/orders?sslmode=require"
          - Host: !If [CreateNetwork, !GetAtt Db.Endpoint.Address, !Ref NoDefault]
Resources:
  Sg:
    Type: AWS::EC2::SecurityGroup
    Condition: CreateNetwork
  Cache:
    Type: AWS::ElastiCache::ReplicationGroup
    Condition: CreateCache
    DeletionPolicy: Snapshot
  WorkerFunction:
    Type: AWS::Serverless::Function
    DependsOn: Migrations
    Properties:
      AutoPublishAlias: live
      Policies: [VPCAccessPolicy: {}]
      VpcConfig:
        SecurityGroupIds: [!Ref Sg]
      LoggingConfig:
        LogGroup: !Ref Logs
      Environment:
        Variables:
          REDIS_URL: !If
            - CreateCache
            - !Sub "rediss://${Cache.PrimaryEndPoint.Address}:${Cache.PrimaryEndPoint.Port}"
            - !Ref RedisUrl
          LONG_IF: { "Fn::If": [CreateCache, a, b] }
          ADDRESS: !GetAtt Cache.PrimaryEndPoint.Address
          PLAIN: kept
  Migrations:
    Type: Custom::DatabaseMigrations
    Properties:
      ServiceToken: !Ref WorkerFunction.Alias
      FunctionVersion: !Ref WorkerFunction.Version
"#;

    /// What a deployment adds (rules, conditions, VPC, tracing, policies,
    /// aliases, custom resources) is accepted; environment values that
    /// reference resources or conditions are reported as unresolved, not
    /// guessed and not failed on.
    #[test]
    fn deployment_properties() {
        let template = parse(DEPLOYMENT).expect("parses");
        let [worker] = &template.functions[..] else {
            panic!("one function: {:?}", template.functions);
        };
        assert_eq!(
            worker.environment,
            BTreeMap::from([
                ("METRICS_NAMESPACE".to_owned(), "Orders".to_owned()),
                ("PLAIN".to_owned(), "kept".to_owned()),
            ])
        );
        assert_eq!(
            worker.unresolved_environment,
            ["ADDRESS", "DATABASE_URL", "LONG_IF", "REDIS_URL"]
        );
        assert_eq!(template.parameters["NoDefault"], None);
        assert_eq!(template.parameters["RedisUrl"].as_deref(), Some(""));
    }

    const INTRINSICS: &str = r#"
Parameters:
  Host: { Type: String }
  Port: { Type: Number, Default: 5432 }
  Name: { Type: String, Default: orders }
  Secret: { Type: String }
  Seconds: { Type: Number, Default: 20 }
Globals:
  Function:
    Timeout: 30
    Environment:
      Variables:
        FROM_GLOBALS: global
        OVERRIDDEN: global
        HOST_LATER: !Ref Host
Resources:
  Table:
    Type: AWS::DynamoDB::Table
  WorkerFunction:
    Type: AWS::Serverless::Function
    Properties:
      Timeout: !Ref Seconds
      Environment:
        Variables:
          OVERRIDDEN: mine
          PLAIN: text
          NUMBER: 42
          FLOAT: 1.5
          BOOL: true
          PORT: !Ref Port
          PORT_LONG: { Ref: Port }
          REGION: !Ref AWS::Region
          SUB: !Sub "postgres://${Name}:${Port}/${AWS::AccountId}.${AWS::URLSuffix}"
          SUB_LONG: { "Fn::Sub": "${AWS::Partition}-${AWS::StackName}" }
          SUB_LIST: !Sub ["${Greeting}, ${Name}", { Greeting: hello }]
          SUB_LITERAL: !Sub "${!Name} is ${Name}"
          NO_DEFAULT: !Ref Host
          SUB_NO_DEFAULT: !Sub "${Host}:${Port}"
          RESOURCE: !Ref Table
          ATTRIBUTE: !GetAtt Table.Arn
          SUB_ATTRIBUTE: !Sub "${Table.Arn}"
          JOIN: !Join [",", [a, b]]
          DYNAMIC: "{{resolve:ssm:/orders/key}}"
          SUB_DYNAMIC: !Sub "{{resolve:secretsmanager:${Name}:SecretString:password}}"
"#;

    /// Plain scalars become strings; Ref and Sub to known values resolve;
    /// everything only AWS knows is reported instead of guessed.
    #[test]
    fn intrinsics() {
        let template = parse(INTRINSICS).expect("parses");
        assert_eq!(template.functions.len(), 1);
        let worker = &template.functions[0];
        assert_eq!(worker.binary, "worker");
        assert_eq!(worker.timeout, Duration::from_secs(20));
        let env = &worker.environment;
        let expected = [
            ("FROM_GLOBALS", "global"),
            ("OVERRIDDEN", "mine"),
            ("PLAIN", "text"),
            ("NUMBER", "42"),
            ("FLOAT", "1.5"),
            ("BOOL", "true"),
            ("PORT", "5432"),
            ("PORT_LONG", "5432"),
            ("REGION", "us-east-1"),
            ("SUB", "postgres://orders:5432/000000000000.amazonaws.com"),
            ("SUB_LONG", "aws-local"),
            ("SUB_LIST", "hello, orders"),
            ("SUB_LITERAL", "${Name} is orders"),
        ];
        for (name, value) in expected {
            assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
        }
        assert_eq!(env.len(), expected.len(), "{env:?}");
        assert_eq!(
            worker.unresolved_environment,
            [
                "ATTRIBUTE",
                "DYNAMIC",
                "HOST_LATER",
                "JOIN",
                "NO_DEFAULT",
                "RESOURCE",
                "SUB_ATTRIBUTE",
                "SUB_DYNAMIC",
                "SUB_NO_DEFAULT"
            ]
        );
        assert_eq!(template.parameters["Port"].as_deref(), Some("5432"));
        assert_eq!(template.parameters["Host"], None);
    }

    /// Parameter overrides win over Defaults and fill the ones without.
    #[test]
    fn parameter_overrides() {
        let overrides = BTreeMap::from([
            ("Host".to_owned(), "db.local".to_owned()),
            ("Port".to_owned(), "6543".to_owned()),
        ]);
        let template = parse_with_parameters(INTRINSICS, &overrides).expect("parses");
        let worker = &template.functions[0];
        assert_eq!(worker.environment["NO_DEFAULT"], "db.local");
        assert_eq!(worker.environment["SUB_NO_DEFAULT"], "db.local:6543");
        assert_eq!(worker.environment["HOST_LATER"], "db.local");
        assert!(!worker
            .unresolved_environment
            .contains(&"NO_DEFAULT".to_owned()));
        // A dynamic reference stays unresolved even once substituted.
        assert!(worker
            .unresolved_environment
            .contains(&"SUB_DYNAMIC".to_owned()));

        let unknown = BTreeMap::from([("Nope".to_owned(), "x".to_owned())]);
        let message = format!(
            "{:#}",
            parse_with_parameters(INTRINSICS, &unknown).expect_err("unknown parameter")
        );
        assert!(message.contains("Nope"), "{message}");
        assert!(
            message.contains("Host, Name, Port, Seconds, Secret"),
            "{message}"
        );
    }

    const EVENTS: &str = r#"
Resources:
  JobsFunction:
    Type: AWS::Serverless::Function
    Metadata:
      BuildProperties:
        Binary: jobs-bin
    Properties:
      Description: Runs jobs
      MemorySize: 512
      Events:
        Nightly:
          Type: Schedule
          Properties:
            Schedule: cron(0 2 * * ? *)
            Name: nightly-jobs
            Input: '{"job": "nightly"}'
            Description: Every night
        Paused:
          Type: Schedule
          Properties:
            Schedule: rate(5 minutes)
            Enabled: false
        Stopped:
          Type: Schedule
          Properties:
            Schedule: rate(1 hour)
            State: DISABLED
        Queue:
          Type: SQS
          Properties:
            Queue: arn:aws:sqs:us-east-1:000000000000:jobs
        Rest:
          Type: Api
          Properties:
            Path: /jobs
            Method: get
        Http:
          Type: HttpApi
          Properties:
            Path: /jobs/{id}
            Method: get
"#;

    /// Schedules keep their settings; routes are upper-cased; other event
    /// types, REST API included, are listed as ignored.
    #[test]
    fn events() {
        let template = parse(EVENTS).expect("parses");
        let jobs = &template.functions[0];
        assert_eq!(jobs.binary, "jobs-bin");
        assert_eq!(jobs.description.as_deref(), Some("Runs jobs"));
        assert_eq!(jobs.memory_mb, 512);
        assert_eq!(jobs.timeout, Duration::from_secs(3));
        assert_eq!(jobs.reserved_concurrency, None);

        let [nightly, paused, stopped] = &jobs.schedules[..] else {
            panic!("three schedules: {:?}", jobs.schedules);
        };
        assert_eq!(nightly.event, "Nightly");
        assert_eq!(nightly.rule_name, "nightly-jobs");
        assert_eq!(nightly.expression.to_string(), "cron(0 2 * * ? *)");
        assert!(nightly.enabled);
        assert_eq!(nightly.input, Some(serde_json::json!({"job": "nightly"})));
        assert_eq!(nightly.description.as_deref(), Some("Every night"));
        assert!(!paused.enabled);
        assert_eq!(paused.rule_name, "JobsFunctionPaused");
        assert!(!stopped.enabled);

        assert_eq!(
            jobs.http_routes,
            [HttpRoute {
                event: "Http".to_owned(),
                method: "GET".to_owned(),
                path: "/jobs/{id}".to_owned(),
                auth: RouteAuthSpec::default(),
            }]
        );
        assert_eq!(jobs.ignored_events, ["Queue (SQS)", "Rest (Api)"]);
    }

    /// Binary names default to the logical id in kebab-case.
    #[test]
    fn binary_names() {
        assert_eq!(kebab_binary_name("CreateOrderFunction"), "create-order");
        assert_eq!(kebab_binary_name("OutboxRelayFunction"), "outbox-relay");
        assert_eq!(kebab_binary_name("HTTPProxyFunction"), "http-proxy");
        assert_eq!(kebab_binary_name("Worker2Function"), "worker2");
        assert_eq!(kebab_binary_name("Function"), "function");
        assert_eq!(kebab_binary_name("Relay"), "relay");
    }

    const STREAMS: &str = r#"
Globals:
  Function:
    Environment:
      Variables:
        STREAM_PARTITIONS: 4
Resources:
  ConsumerFunction:
    Type: AWS::Serverless::Function
    Properties:
      Environment:
        Variables:
          STREAM_SOURCE: "Order, Reservation"
          STREAM_NAMESPACE: test
          BATCH_SIZE: 10
          UNRELATED: x
  RelayFunction:
    Type: AWS::Serverless::Function
"#;

    /// A stream source reads its variables, with defaults for the missing.
    #[test]
    fn stream_source() {
        let template = parse(STREAMS).expect("parses");
        let stream = template.functions[0]
            .stream_source()
            .expect("a stream source");
        assert_eq!(
            stream,
            StreamSourceSpec {
                aggregate_types: vec!["Order".to_owned(), "Reservation".to_owned()],
                group: "consumer".to_owned(),
                namespace: "test".to_owned(),
                partitions: 4,
                settings: BTreeMap::from([("BATCH_SIZE".to_owned(), "10".to_owned())]),
            }
        );
        assert_eq!(template.functions[1].stream_source(), None);

        let bad = STREAMS.replace("STREAM_PARTITIONS: 4", "STREAM_PARTITIONS: 0");
        assert!(error(&bad).contains("STREAM_PARTITIONS"), "{}", error(&bad));
    }

    /// The overrides file sets, adds and fills variables per function or for
    /// all, and names what is wrong when it is wrong.
    #[test]
    fn env_overrides() {
        let mut template = parse(INTRINSICS).expect("parses");
        apply_env_overrides(
            &mut template,
            r#"{
                "worker": {"NO_DEFAULT": "db.local", "NEW": 7, "FLAG": false},
                "Parameters": {"NO_DEFAULT": "loses", "EVERYWHERE": "yes", "PLAIN": "changed"}
            }"#,
        )
        .expect("applies");
        let worker = &template.functions[0];
        assert_eq!(worker.environment["NO_DEFAULT"], "db.local");
        assert_eq!(worker.environment["NEW"], "7");
        assert_eq!(worker.environment["FLAG"], "false");
        assert_eq!(worker.environment["EVERYWHERE"], "yes");
        assert_eq!(worker.environment["PLAIN"], "changed");
        assert!(!worker
            .unresolved_environment
            .contains(&"NO_DEFAULT".to_owned()));

        let message = format!(
            "{:#}",
            apply_env_overrides(&mut template, r#"{"Nope": {}}"#).expect_err("unknown")
        );
        assert_eq!(
            message,
            "env overrides: no function `Nope` in the template (known: WorkerFunction)"
        );
        let message = format!(
            "{:#}",
            apply_env_overrides(&mut template, r#"{"WorkerFunction": {"X": [1]}}"#)
                .expect_err("a list")
        );
        assert_eq!(
            message,
            "env overrides: WorkerFunction.X: the value must be a string, number or boolean"
        );
        assert!(apply_env_overrides(&mut template, "[]").is_err());
        assert!(apply_env_overrides(&mut template, "{").is_err());
    }

    /// A dotenv file sets its variables for every function, reading comments,
    /// quotes and `export` as dotenv tools do; a bad line is named.
    #[test]
    fn env_file() {
        let mut template = parse(INTRINSICS).expect("parses");
        apply_env_file(
            &mut template,
            "# local settings\nexport NO_DEFAULT=db.local\nQUOTED=\"two words\"\n\nPLAIN='changed' # a comment\n",
        )
        .expect("applies");
        let worker = &template.functions[0];
        assert_eq!(worker.environment["NO_DEFAULT"], "db.local");
        assert_eq!(worker.environment["QUOTED"], "two words");
        assert_eq!(worker.environment["PLAIN"], "changed");
        assert!(!worker
            .unresolved_environment
            .contains(&"NO_DEFAULT".to_owned()));
        // A per-function override applied afterwards (`--env-vars`) wins.
        apply_env_overrides(&mut template, r#"{"WorkerFunction": {"PLAIN": "mine"}}"#)
            .expect("applies");
        assert_eq!(template.functions[0].environment["PLAIN"], "mine");

        let message = format!(
            "{:#}",
            apply_env_file(&mut template, "GOOD=1\nBAD LINE\n").expect_err("a bad line")
        );
        assert!(message.contains("BAD LINE"), "{message}");
        let bad = apply_env_file(&mut template, "STREAM_PARTITIONS=0\n").expect_err("checked");
        assert!(format!("{bad:#}").contains("STREAM_PARTITIONS"), "{bad:#}");
    }

    /// Every function property the emulator does not act on is reported once,
    /// with where it is set and what that means; build properties are not.
    #[test]
    fn properties_not_emulated_are_listed() {
        let template = parse(
            r#"
Globals:
  Function:
    Runtime: provided.al2023
    Tracing: Active
    VpcConfig: { SubnetIds: [a] }
    Timeout: 5
Resources:
  JobsFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: .
      Handler: bootstrap
      MemorySize: 256
      Layers: [arn]
      Policies: [AWSLambdaBasicExecutionRole]
      VpcConfig: { SubnetIds: [b] }
      Unheard: yes
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      Tracing: not a function's
"#,
        )
        .expect("parses");
        assert_eq!(
            template.not_emulated_lines(),
            [
                "Layers (JobsFunction): no layers: the binary must carry what it needs",
                "Policies (JobsFunction): no IAM: every call is allowed",
                "Tracing (Globals): no X-Ray segments (trace ids are still carried from hop to hop)",
                "Unheard (JobsFunction): ignored",
                "VpcConfig (Globals, JobsFunction): no network isolation: functions reach the local stores directly",
            ]
        );
    }

    /// Invalid templates fail with one line naming the resource and field.
    #[test]
    fn errors() {
        let function = |properties: &str| {
            error(&format!(
                "Resources:\n  ApiFunction:\n    Type: AWS::Serverless::Function\n    Properties:\n{properties}"
            ))
        };
        assert_eq!(
            function("      Events:\n        Orders:\n          Type: HttpApi\n          Properties:\n            Method: GET\n"),
            "ApiFunction: Events.Orders: HttpApi event without Path"
        );
        assert_eq!(
            function("      Events:\n        Orders:\n          Type: HttpApi\n"),
            "ApiFunction: Events.Orders: HttpApi event without Path"
        );
        assert_eq!(
            function("      Events:\n        Orders:\n          Type: HttpApi\n          Properties:\n            Path: /x\n"),
            "ApiFunction: Events.Orders: HttpApi event without Method"
        );
        assert_eq!(
            function("      Events:\n        Tick:\n          Type: Schedule\n          Properties:\n            Schedule: rate(1 minutes)\n"),
            "ApiFunction: Events.Tick: invalid schedule expression `rate(1 minutes)`: use `minute`, not `minutes`, when the value is 1"
        );
        assert!(function("      Events:\n        Tick:\n          Type: Schedule\n          Properties:\n            Schedule: rate(1 minute)\n            Input: '{nope'\n")
            .starts_with("ApiFunction: Events.Tick: Input: not valid JSON"));
        assert_eq!(
            function("      Timeout: 0\n"),
            "ApiFunction: Timeout: expected a whole number 1-900, got `0`"
        );
        assert_eq!(
            function("      Timeout: soon\n"),
            "ApiFunction: Timeout: expected a whole number 1-900, got `soon`"
        );
        assert_eq!(
            function("      Environment:\n        Variables:\n          X: [1, 2]\n"),
            "ApiFunction: Environment.Variables.X: expected a string, number or boolean, not a list"
        );
        assert_eq!(
            function("      Events:\n        Orders:\n          Properties: {}\n"),
            "ApiFunction: Events.Orders: event without Type"
        );
        assert!(error("Resources: [").starts_with("invalid YAML"));
        assert_eq!(error("Parameters: {}\n"), "the template has no Resources");
    }

    /// `load` puts the file name in front of the error.
    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("emulator-template-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("template.yaml");
        std::fs::write(
            &path,
            "Resources:\n  CreateOrderFunction:\n    Type: AWS::Serverless::Function\n    Properties:\n      Events:\n        Orders:\n          Type: HttpApi\n          Properties:\n            Method: ANY\n",
        )
        .expect("write template");
        let message = format!("{:#}", load(&path).expect_err("invalid"));
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(
            message,
            format!(
                "{}: CreateOrderFunction: Events.Orders: HttpApi event without Path",
                path.display()
            )
        );
    }
}
