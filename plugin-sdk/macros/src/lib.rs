//! `#[portico_plugin_sdk::plugin]`, re-exported by `portico-plugin-sdk`: put it on your
//! `impl Plugin for T` block. It keeps the block as it is and exports the Proxy-Wasm entry
//! points for `T` — only those of the hooks the block defines, plus the lifecycle ones, so the
//! host never calls into the guest for a phase the plugin does not handle (and a chain whose
//! plugins have no body hooks streams bodies without touching them).
//!
//! It reads the block's tokens directly (no `syn`): the type after `for`, and the name after
//! every `fn` at the block's top level.

use proc_macro::{Delimiter, TokenStream, TokenTree};

/// Exports a plugin type; see the crate docs of `portico-plugin-sdk`.
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return error("#[plugin] takes no arguments");
    }
    let tokens: Vec<TokenTree> = item.clone().into_iter().collect();
    let is_impl = tokens
        .iter()
        .any(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "impl"));
    let Some(for_at) = tokens
        .iter()
        .position(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "for"))
    else {
        return error("#[plugin] goes on an `impl Plugin for YourType { ... }` block");
    };
    let Some(body_at) = tokens
        .iter()
        .rposition(|t| matches!(t, TokenTree::Group(g) if g.delimiter() == Delimiter::Brace))
    else {
        return error("#[plugin] goes on an `impl Plugin for YourType { ... }` block");
    };
    if !is_impl || body_at <= for_at + 1 {
        return error("#[plugin] goes on an `impl Plugin for YourType { ... }` block");
    }
    let ty: TokenStream = tokens[for_at + 1..body_at].iter().cloned().collect();
    let TokenTree::Group(body) = &tokens[body_at] else {
        unreachable!("found as a group above");
    };
    let mut hooks = Vec::new();
    let mut body_tokens = body.stream().into_iter().peekable();
    while let Some(t) = body_tokens.next() {
        if let TokenTree::Ident(i) = &t
            && i.to_string() == "fn"
            && let Some(TokenTree::Ident(name)) = body_tokens.peek()
        {
            hooks.push(name.to_string());
        }
    }
    let export: TokenStream = format!(
        "::portico_plugin_sdk::__export_hooks!({}; {});",
        ty,
        hooks.join(", ")
    )
    .parse()
    .expect("the export is valid tokens");
    let mut out = item;
    out.extend(export);
    out
}

fn error(message: &str) -> TokenStream {
    format!("::core::compile_error!({message:?});")
        .parse()
        .expect("valid tokens")
}
