//! A test guest that is a valid component of another world: it exports
//! `run` instead of `handle`, so a host must refuse it.

#![allow(unsafe_code)] // generated bindings cross the component ABI

wit_bindgen::generate!({
    inline: "
        package test:wrong-world;
        world other {
            export run: func() -> u32;
        }
    ",
});

struct Other;

impl Guest for Other {
    fn run() -> u32 {
        7
    }
}

export!(Other);
