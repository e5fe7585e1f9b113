//! `AWS::Serverless::HttpApi` resources: their JWT authorizers, route throttling
//! and CORS, as far as they can be known locally; and `Conditions`, which these
//! properties use (`!If [UseCognito, ...]`).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};
use yaml_serde::{Mapping, Value};

use super::{mapping, Resolver};

/// One `AWS::Serverless::HttpApi`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpApiSpec {
    pub logical_id: String,
    /// `Auth.Authorizers`: JWT authorizers by name.
    pub authorizers: BTreeMap<String, JwtAuthorizerSpec>,
    /// `Auth.DefaultAuthorizer`.
    pub default_authorizer: Option<String>,
    /// `DefaultRouteSettings`' throttling.
    pub throttle: Option<Throttle>,
    /// `CorsConfiguration`.
    pub cors: Option<CorsSpec>,
}

/// A JWT authorizer (`JwtConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthorizerSpec {
    /// The request header that carries the token (`$request.header.Authorization`
    /// → `authorization`).
    pub identity_header: String,
    /// `issuer`; `None` when only AWS knows it (a user pool the stack creates).
    pub issuer: Option<String>,
    /// `audience`; `None` when only AWS knows it.
    pub audiences: Option<Vec<String>>,
}

/// API Gateway's token bucket: `burst` requests at once, refilled at `rate` per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttle {
    pub burst: u32,
    pub rate: f64,
}

/// `CorsConfiguration` (`true` allows every origin, method and header).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CorsSpec {
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<u32>,
    pub allow_credentials: bool,
}

/// A route's `Auth` and `RouteSettings`, as its `HttpApi` event declares them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteAuthSpec {
    /// `ApiId: !Ref Name`; `None` for SAM's implicit API.
    pub api: Option<String>,
    /// `Auth.Authorizer` (`NONE` turns the default off).
    pub authorizer: Option<String>,
    /// `Auth.AuthorizationScopes`.
    pub scopes: Vec<String>,
    /// `RouteSettings`' throttling.
    pub throttle: Option<Throttle>,
}

/// Evaluates `Conditions` and `Fn::If` over a [`Resolver`]: `None` when the
/// answer depends on something only AWS knows.
#[derive(Debug)]
pub(super) struct Conditions<'a> {
    pub(super) resolver: &'a Resolver<'a>,
    pub(super) declared: Option<&'a Mapping>,
}

/// `!Name arg` or `{"Fn::Name": arg}` / `{"Ref": arg}`: the function's name and argument.
fn intrinsic(value: &Value) -> Option<(String, &Value)> {
    match value {
        Value::Tagged(tagged) => Some((
            tagged.tag.to_string().trim_start_matches('!').to_owned(),
            &tagged.value,
        )),
        Value::Mapping(m) if m.len() == 1 => match m.iter().next() {
            Some((Value::String(key), arg)) if key == "Ref" || key.starts_with("Fn::") => {
                Some((key.trim_start_matches("Fn::").to_owned(), arg))
            }
            Some((Value::String(key), arg)) if key == "Condition" => Some((key.clone(), arg)),
            _ => None,
        },
        _ => None,
    }
}

impl<'a> Conditions<'a> {
    const MAX_DEPTH: usize = 32;

    pub(super) fn of(resolver: &'a Resolver<'a>) -> Self {
        Self {
            resolver,
            declared: resolver.conditions,
        }
    }

    fn named(&self, name: &str, depth: usize) -> Option<bool> {
        let condition = self.declared?.get(name)?;
        self.boolean(condition, depth + 1)
    }

    fn boolean(&self, value: &Value, depth: usize) -> Option<bool> {
        if depth > Self::MAX_DEPTH {
            return None;
        }
        let (function, arg) = intrinsic(value)?;
        let items = || match arg {
            Value::Sequence(items) => items.as_slice(),
            _ => &[],
        };
        match function.as_str() {
            "Condition" => self.named(arg.as_str()?, depth),
            "Equals" => match items() {
                [a, b] => Some(self.scalar(a).ok()?? == self.scalar(b).ok()??),
                _ => None,
            },
            "Not" => match items() {
                [c] => Some(!self.boolean(c, depth + 1)?),
                _ => None,
            },
            "And" => items()
                .iter()
                .try_fold(true, |all, c| Some(all && self.boolean(c, depth + 1)?)),
            "Or" => items()
                .iter()
                .try_fold(false, |any, c| Some(any || self.boolean(c, depth + 1)?)),
            _ => None,
        }
    }

    /// The value itself, or the branch an `Fn::If` takes; `Ok(None)` for
    /// `AWS::NoValue` or a condition only AWS can decide.
    pub(super) fn select<'v>(&self, value: &'v Value) -> Result<Option<&'v Value>, String> {
        let mut value = value;
        for _ in 0..Self::MAX_DEPTH {
            match intrinsic(value) {
                Some((f, arg)) if f == "If" => {
                    let Value::Sequence(parts) = arg else {
                        return Err("If needs [condition, then, else]".into());
                    };
                    let [Value::String(condition), then, otherwise] = &parts[..] else {
                        return Err("If needs [condition, then, else]".into());
                    };
                    match self.named(condition, 0) {
                        Some(true) => value = then,
                        Some(false) => value = otherwise,
                        None => return Ok(None),
                    }
                }
                Some((f, Value::String(name))) if f == "Ref" && name == "AWS::NoValue" => {
                    return Ok(None)
                }
                _ => return Ok(Some(value)),
            }
        }
        Err("Fn::If nested too deeply".into())
    }

    /// A scalar, through any `Fn::If`.
    pub(super) fn scalar(&self, value: &Value) -> Result<Option<String>, String> {
        match self.select(value)? {
            Some(value) => self.resolver.scalar(value),
            None => Ok(None),
        }
    }

    /// A list: a YAML sequence of scalars, or `!Split [sep, text]`; `None` when
    /// any part is known only to AWS.
    pub(super) fn list(&self, value: &Value) -> Result<Option<Vec<String>>, String> {
        let Some(value) = self.select(value)? else {
            return Ok(None);
        };
        match value {
            Value::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match self.scalar(item)? {
                        Some(text) => out.push(text),
                        None => return Ok(None),
                    }
                }
                Ok(Some(out))
            }
            _ => match intrinsic(value) {
                Some((f, Value::Sequence(parts))) if f == "Split" => match &parts[..] {
                    [separator, text] => {
                        let (Some(separator), Some(text)) =
                            (self.scalar(separator)?, self.scalar(text)?)
                        else {
                            return Ok(None);
                        };
                        Ok(Some(
                            text.split(separator.as_str())
                                .map(str::trim)
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned)
                                .collect(),
                        ))
                    }
                    _ => Err("Split needs [separator, text]".into()),
                },
                _ => Ok(self.scalar(value)?.map(|one| vec![one])),
            },
        }
    }
}

/// Every `AWS::Serverless::HttpApi` of `resources`.
pub(super) fn http_apis(
    resources: &Mapping,
    conditions: &Conditions<'_>,
) -> anyhow::Result<BTreeMap<String, HttpApiSpec>> {
    let mut apis = BTreeMap::new();
    for (id, resource) in resources {
        let Some(id) = id.as_str() else { continue };
        if resource.get("Type").and_then(Value::as_str) != Some("AWS::Serverless::HttpApi") {
            continue;
        }
        let properties = mapping(resource.get("Properties"), &format!("{id}: Properties"))?;
        apis.insert(id.to_owned(), http_api(id, properties, conditions)?);
    }
    Ok(apis)
}

fn http_api(
    id: &str,
    properties: Option<&Mapping>,
    conditions: &Conditions<'_>,
) -> anyhow::Result<HttpApiSpec> {
    let mut spec = HttpApiSpec {
        logical_id: id.to_owned(),
        ..HttpApiSpec::default()
    };
    let Some(properties) = properties else {
        return Ok(spec);
    };
    let text = |value: &Value, at: &str| -> anyhow::Result<Option<String>> {
        conditions.scalar(value).map_err(|e| anyhow!("{at}: {e}"))
    };
    if let Some(auth) = property(properties, "Auth", id, conditions)? {
        let at = format!("{id}: Auth");
        let auth = mapping(Some(auth), &at)?.ok_or_else(|| anyhow!("{at}: empty"))?;
        if let Some(default) = auth.get("DefaultAuthorizer") {
            spec.default_authorizer = text(default, &format!("{at}.DefaultAuthorizer"))?;
        }
        let authorizers = mapping(auth.get("Authorizers"), &format!("{at}.Authorizers"))?;
        for (name, authorizer) in authorizers.into_iter().flatten() {
            let name = name
                .as_str()
                .ok_or_else(|| anyhow!("{at}.Authorizers: a name is not a string"))?;
            let at = format!("{at}.Authorizers.{name}");
            let authorizer =
                mapping(Some(authorizer), &at)?.ok_or_else(|| anyhow!("{at}: empty"))?;
            spec.authorizers.insert(
                name.to_owned(),
                jwt_authorizer(authorizer, &at, conditions)?,
            );
        }
    }
    if let Some(settings) = property(properties, "DefaultRouteSettings", id, conditions)? {
        let at = format!("{id}: DefaultRouteSettings");
        spec.throttle = throttle(mapping(Some(settings), &at)?, &at, conditions)?;
    }
    if let Some(cors) = property(properties, "CorsConfiguration", id, conditions)? {
        spec.cors = cors_configuration(cors, &format!("{id}: CorsConfiguration"), conditions)?;
    }
    Ok(spec)
}

/// A property through any `Fn::If`; `None` when absent, `AWS::NoValue`, or undecidable.
fn property<'v>(
    properties: &'v Mapping,
    name: &str,
    at: &str,
    conditions: &Conditions<'_>,
) -> anyhow::Result<Option<&'v Value>> {
    match properties.get(name) {
        None => Ok(None),
        Some(value) => conditions
            .select(value)
            .map_err(|e| anyhow!("{at}: {name}: {e}")),
    }
}

fn jwt_authorizer(
    authorizer: &Mapping,
    at: &str,
    conditions: &Conditions<'_>,
) -> anyhow::Result<JwtAuthorizerSpec> {
    let Some(jwt) = mapping(
        authorizer.get("JwtConfiguration"),
        &format!("{at}.JwtConfiguration"),
    )?
    else {
        bail!("{at}: only JWT authorizers (JwtConfiguration) are emulated");
    };
    let identity_source = match authorizer.get("IdentitySource") {
        None => "$request.header.Authorization".to_owned(),
        Some(value) => conditions
            .scalar(value)
            .map_err(|e| anyhow!("{at}.IdentitySource: {e}"))?
            .ok_or_else(|| anyhow!("{at}.IdentitySource: cannot be resolved locally"))?,
    };
    let identity_header = identity_source
        .strip_prefix("$request.header.")
        .ok_or_else(|| {
            anyhow!("{at}.IdentitySource: only `$request.header.NAME` is emulated, not `{identity_source}`")
        })?
        .to_ascii_lowercase();
    let issuer = match jwt.get("issuer") {
        None => bail!("{at}.JwtConfiguration: no issuer"),
        Some(value) => conditions
            .scalar(value)
            .map_err(|e| anyhow!("{at}.JwtConfiguration.issuer: {e}"))?
            .filter(|issuer| !issuer.is_empty()),
    };
    let audiences = match jwt.get("audience") {
        None => Some(Vec::new()),
        Some(value) => conditions
            .list(value)
            .map_err(|e| anyhow!("{at}.JwtConfiguration.audience: {e}"))?
            .filter(|a| !a.iter().all(String::is_empty)),
    };
    Ok(JwtAuthorizerSpec {
        identity_header,
        issuer,
        audiences,
    })
}

fn throttle(
    settings: Option<&Mapping>,
    at: &str,
    conditions: &Conditions<'_>,
) -> anyhow::Result<Option<Throttle>> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    let number = |name: &str| -> anyhow::Result<Option<f64>> {
        let Some(value) = settings.get(name) else {
            return Ok(None);
        };
        let text = conditions
            .scalar(value)
            .map_err(|e| anyhow!("{at}.{name}: {e}"))?
            .ok_or_else(|| anyhow!("{at}.{name}: cannot be resolved locally"))?;
        match text.trim().parse::<f64>() {
            Ok(n) if n >= 0.0 && n.is_finite() => Ok(Some(n)),
            _ => bail!("{at}.{name}: expected a number ≥ 0, got `{text}`"),
        }
    };
    let burst = number("ThrottlingBurstLimit")?;
    let rate = number("ThrottlingRateLimit")?;
    Ok(match (burst, rate) {
        (None, None) => None,
        (burst, rate) => Some(Throttle {
            // Truncation is intended: a burst is a whole number of requests.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            burst: burst.map_or(u32::MAX, |b| b.min(f64::from(u32::MAX)) as u32),
            rate: rate.unwrap_or(f64::MAX),
        }),
    })
}

fn cors_configuration(
    value: &Value,
    at: &str,
    conditions: &Conditions<'_>,
) -> anyhow::Result<Option<CorsSpec>> {
    if let Some(enabled) = conditions.scalar(value).ok().flatten() {
        return Ok((enabled == "true").then(|| CorsSpec {
            allow_origins: vec!["*".into()],
            allow_methods: vec!["*".into()],
            allow_headers: vec!["*".into()],
            ..CorsSpec::default()
        }));
    }
    let cors = mapping(Some(value), at)?.ok_or_else(|| anyhow!("{at}: empty"))?;
    let list = |name: &str| -> anyhow::Result<Vec<String>> {
        match cors.get(name) {
            None => Ok(Vec::new()),
            Some(value) => conditions
                .list(value)
                .map_err(|e| anyhow!("{at}.{name}: {e}"))?
                .ok_or_else(|| anyhow!("{at}.{name}: cannot be resolved locally")),
        }
    };
    let scalar = |name: &str| -> anyhow::Result<Option<String>> {
        match cors.get(name) {
            None => Ok(None),
            Some(value) => conditions
                .scalar(value)
                .map_err(|e| anyhow!("{at}.{name}: {e}")),
        }
    };
    let max_age = match scalar("MaxAge")? {
        None => None,
        Some(text) => Some(
            text.parse::<u32>()
                .map_err(|_| anyhow!("{at}.MaxAge: expected seconds, got `{text}`"))?,
        ),
    };
    Ok(Some(CorsSpec {
        allow_origins: list("AllowOrigins")?,
        allow_methods: list("AllowMethods")?
            .into_iter()
            .map(|m| m.to_ascii_uppercase())
            .collect(),
        allow_headers: list("AllowHeaders")?
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        expose_headers: list("ExposeHeaders")?,
        max_age,
        allow_credentials: scalar("AllowCredentials")?.as_deref() == Some("true"),
    }))
}

/// An `HttpApi` event's `ApiId`, `Auth` and `RouteSettings`.
pub(super) fn route_auth(
    props: Option<&Mapping>,
    at: &str,
    conditions: &Conditions<'_>,
) -> anyhow::Result<RouteAuthSpec> {
    let mut spec = RouteAuthSpec::default();
    let Some(props) = props else {
        return Ok(spec);
    };
    if let Some(api) = props.get("ApiId") {
        spec.api = match intrinsic(api) {
            Some((f, Value::String(name))) if f == "Ref" => Some(name.clone()),
            _ => bail!("{at}: ApiId: expected `!Ref` to an AWS::Serverless::HttpApi"),
        };
    }
    if let Some(auth) = props.get("Auth") {
        let auth = mapping(Some(auth), &format!("{at}: Auth"))?;
        if let Some(auth) = auth {
            if let Some(name) = auth.get("Authorizer") {
                spec.authorizer = conditions
                    .scalar(name)
                    .map_err(|e| anyhow!("{at}: Auth.Authorizer: {e}"))?;
            }
            if let Some(scopes) = auth.get("AuthorizationScopes") {
                spec.scopes = conditions
                    .list(scopes)
                    .map_err(|e| anyhow!("{at}: Auth.AuthorizationScopes: {e}"))?
                    .ok_or_else(|| {
                        anyhow!("{at}: Auth.AuthorizationScopes: cannot be resolved locally")
                    })?;
            }
        }
    }
    let settings = mapping(props.get("RouteSettings"), &format!("{at}: RouteSettings"))?;
    spec.throttle = throttle(settings, &format!("{at}: RouteSettings"), conditions)?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::super::parse_with_parameters;

    const API: &str = r#"
Parameters:
  AuthIssuer: {Type: String, Default: ""}
  AuthAudience: {Type: String, Default: ""}
  Origins: {Type: String, Default: "https://shop.example, https://admin.example"}
Conditions:
  CreateUserPool: !Equals [!Ref AuthIssuer, ""]
  NoPool: !Not [!Condition CreateUserPool]
Resources:
  Api:
    Type: AWS::Serverless::HttpApi
    Properties:
      Auth:
        DefaultAuthorizer: Jwt
        Authorizers:
          Jwt:
            IdentitySource: $request.header.Authorization
            JwtConfiguration:
              issuer: !If [CreateUserPool, !Sub "https://cognito-idp.${AWS::Region}.amazonaws.com/${Pool}", !Ref AuthIssuer]
              audience: !If [NoPool, [!Ref AuthAudience], [!Ref Client]]
      DefaultRouteSettings:
        ThrottlingBurstLimit: 20
        ThrottlingRateLimit: 10.5
      CorsConfiguration:
        AllowOrigins: !Split [",", !Ref Origins]
        AllowMethods: [GET, post]
        AllowHeaders: [Authorization, Content-Type]
        ExposeHeaders: [Location]
        MaxAge: 600
  F:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        Read:
          Type: HttpApi
          Properties:
            ApiId: !Ref Api
            Path: /things/{id}
            Method: GET
            Auth:
              AuthorizationScopes: [things:read]
        Open:
          Type: HttpApi
          Properties:
            ApiId: !Ref Api
            Path: /health
            Method: GET
            Auth:
              Authorizer: NONE
            RouteSettings:
              ThrottlingBurstLimit: 1
              ThrottlingRateLimit: 1
"#;

    #[test]
    fn authorizers_throttling_and_cors_are_read() {
        let template = parse_with_parameters(API, &Default::default()).expect("parses");
        let api = &template.http_apis["Api"];
        assert_eq!(api.default_authorizer.as_deref(), Some("Jwt"));
        let jwt = &api.authorizers["Jwt"];
        assert_eq!(jwt.identity_header, "authorization");
        assert_eq!(
            jwt.issuer, None,
            "a user pool's issuer is known only to AWS"
        );
        assert_eq!(jwt.audiences, None);
        let throttle = api.throttle.expect("throttled");
        assert_eq!((throttle.burst, throttle.rate), (20, 10.5));
        let cors = api.cors.as_ref().expect("cors");
        assert_eq!(
            cors.allow_origins,
            ["https://shop.example", "https://admin.example"]
        );
        assert_eq!(cors.allow_methods, ["GET", "POST"]);
        assert_eq!(cors.allow_headers, ["authorization", "content-type"]);
        assert_eq!(cors.max_age, Some(600));

        let routes = &template.functions[0].http_routes;
        assert_eq!(routes[0].auth.api.as_deref(), Some("Api"));
        assert_eq!(routes[0].auth.scopes, ["things:read"]);
        assert_eq!(routes[0].auth.authorizer, None);
        assert_eq!(routes[1].auth.authorizer.as_deref(), Some("NONE"));
        assert_eq!(routes[1].auth.throttle.map(|t| t.burst), Some(1));
    }

    #[test]
    fn parameter_overrides_choose_the_if_branch() {
        let overrides = [
            ("AuthIssuer".to_owned(), "https://issuer.example".to_owned()),
            ("AuthAudience".to_owned(), "shop".to_owned()),
        ]
        .into_iter()
        .collect();
        let template = parse_with_parameters(API, &overrides).expect("parses");
        let jwt = &template.http_apis["Api"].authorizers["Jwt"];
        assert_eq!(jwt.issuer.as_deref(), Some("https://issuer.example"));
        assert_eq!(jwt.audiences.as_deref(), Some(&["shop".to_owned()][..]));
    }

    #[test]
    fn lambda_authorizers_are_refused_by_name() {
        let yaml = API.replace(
            "JwtConfiguration:",
            "FunctionArn: arn:aws:lambda:us-east-1:1:function:f\n            Other:",
        );
        let error = parse_with_parameters(&yaml, &Default::default())
            .expect_err("refused")
            .to_string();
        assert!(error.contains("only JWT authorizers"), "{error}");
    }
}
