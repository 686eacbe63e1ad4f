//! Header values with placeholders: `"{request.id}"`, `"for={source.ip}"`, `"{header.x-user}"`.
//! Parsed once, at configure; rendered per request against a [`Vars`].

/// A value: literal text and placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// What a placeholder stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// `{request.id}`: the request's id (`x-request-id`).
    RequestId,
    /// `{request.host}`: the `Host` (`:authority`).
    RequestHost,
    /// `{request.path}`: the path with its query.
    RequestPath,
    /// `{request.method}`.
    RequestMethod,
    /// `{request.scheme}`: `http` or `https`.
    RequestScheme,
    /// `{source.address}`: the client's `ip:port`.
    SourceAddress,
    /// `{source.ip}`: the client's IP address alone.
    SourceIp,
    /// `{route}`: the name of the route the request matched.
    Route,
    /// `{header.NAME}`: a request header (lowercase name), its values comma-separated.
    Header(String),
}

/// Where placeholders get their values; `None` renders as nothing.
pub trait Vars {
    fn get(&mut self, var: &Var) -> portico_plugin_sdk::Result<Option<String>>;
}

/// The placeholders, for error messages.
pub const PLACEHOLDERS: &str = "{request.id}, {request.host}, {request.path}, {request.method}, \
     {request.scheme}, {source.address}, {source.ip}, {route}, {header.NAME}";

impl Template {
    /// Parses `text`: `{name}` is a placeholder, `{{` and `}}` are literal braces. `Err` says
    /// what is wrong, for the operator.
    pub fn parse(text: &str) -> Result<Template, String> {
        if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(format!(
                "{c:?} cannot be in a header value (control characters other than tab)"
            ));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            match (&rest[i..i + 1], after.chars().next()) {
                ("{", Some('{')) | ("}", Some('}')) => {
                    literal.push_str(&rest[i..i + 1]);
                    rest = &after[1..];
                }
                ("{", _) => {
                    let Some(end) = after.find('}') else {
                        return Err("{ without a closing } (write {{ for a brace)".into());
                    };
                    let name = &after[..end];
                    let var = Var::parse(name).ok_or_else(|| {
                        format!("unknown placeholder {{{name}}} (known: {PLACEHOLDERS})")
                    })?;
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Var(var));
                    rest = &after[end + 1..];
                }
                _ => return Err("} without an opening { (write }} for a brace)".into()),
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// Whether the value is the same for every request.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The value for one request; a placeholder without a value adds nothing.
    pub fn render(&self, vars: &mut impl Vars) -> portico_plugin_sdk::Result<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => {
                    if let Some(value) = vars.get(v)? {
                        // A value a header could not hold is left out rather than sent broken.
                        out.extend(value.chars().filter(|c| !c.is_control() || *c == '\t'));
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        Some(match name {
            "request.id" => Var::RequestId,
            "request.host" => Var::RequestHost,
            "request.path" => Var::RequestPath,
            "request.method" => Var::RequestMethod,
            "request.scheme" => Var::RequestScheme,
            "source.address" => Var::SourceAddress,
            "source.ip" => Var::SourceIp,
            "route" => Var::Route,
            _ => {
                let header = name.strip_prefix("header.")?;
                if !crate::config::is_token(header) {
                    return None;
                }
                Var::Header(header.to_ascii_lowercase())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every placeholder has a value named after it, except `{header.x-absent}`.
    struct Fixed;

    impl Vars for Fixed {
        fn get(&mut self, var: &Var) -> portico_plugin_sdk::Result<Option<String>> {
            let name = match var {
                Var::RequestId => "request.id",
                Var::RequestHost => "request.host",
                Var::RequestPath => "request.path",
                Var::RequestMethod => "request.method",
                Var::RequestScheme => "request.scheme",
                Var::SourceAddress => "source.address",
                Var::SourceIp => "source.ip",
                Var::Route => "route",
                Var::Header(h) if h == "x-absent" => return Ok(None),
                Var::Header(h) if h == "x-evil" => return Ok(Some("a\r\nb\tc".into())),
                Var::Header(h) => return Ok(Some(format!("<header.{h}>"))),
            };
            Ok(Some(format!("<{name}>")))
        }
    }

    fn render(text: &str) -> Result<String, String> {
        Template::parse(text).map(|t| t.render(&mut Fixed).unwrap())
    }

    #[test]
    fn placeholders_and_braces() {
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("", ""),
            ("{request.id}", "<request.id>"),
            (
                "id={request.id};host={request.host}",
                "id=<request.id>;host=<request.host>",
            ),
            (
                "{request.path}{request.method}{request.scheme}",
                "<request.path><request.method><request.scheme>",
            ),
            (
                "for={source.ip} by={source.address}",
                "for=<source.ip> by=<source.address>",
            ),
            ("{route}", "<route>"),
            ("{header.X-User}", "<header.x-user>"),
            ("[{header.x-absent}]", "[]"),
            ("{header.x-evil}", "ab\tc"),
            ("{{literal}}", "{literal}"),
            ("a{{b}}c{route}", "a{b}c<route>"),
            (
                "max-age=31536000; includeSubDomains",
                "max-age=31536000; includeSubDomains",
            ),
            ("caf\u{e9}", "caf\u{e9}"),
        ];
        for (text, want) in cases {
            assert_eq!(render(text).as_deref(), Ok(*want), "{text:?}");
        }
    }

    #[test]
    fn mistakes_are_explained() {
        let cases: &[(&str, &str)] = &[
            ("{request.adress}", "unknown placeholder {request.adress}"),
            ("{header.}", "unknown placeholder {header.}"),
            ("{header.a b}", "unknown placeholder {header.a b}"),
            ("{}", "unknown placeholder {}"),
            ("{ route }", "unknown placeholder { route }"),
            ("{route", "{ without a closing }"),
            ("a}b", "} without an opening {"),
            ("a\r\nb", "cannot be in a header value"),
            ("a\u{0}", "cannot be in a header value"),
            ("a\n{route}", "cannot be in a header value"),
        ];
        for (text, want) in cases {
            let err = Template::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert!(Template::parse("{x}").unwrap_err().contains("{request.id}"));
    }

    #[test]
    fn literal_templates_are_known() {
        assert!(Template::parse("x{{y}}").unwrap().is_literal());
        assert!(Template::parse("").unwrap().is_literal());
        assert!(!Template::parse("x{route}").unwrap().is_literal());
    }
}
