//! Host bindings generated from `wit/plugin.wit`. Generated once, here, and
//! used only inside [`crate::plugin`]; nothing outside sees WIT types.
#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});
