//! The pages' files, built into the binary. `player.js` is `examples/player.js`
//! itself, so the demo (and the browser tests driving it) use the very client that
//! app developers copy.

pub const CONSOLE_HTML: &str = include_str!("assets/console.html");
pub const DEMO_HTML: &str = include_str!("assets/demo.html");

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The files under `/web/`, by name: a fixed list, so no path ever reaches a file system.
const FILES: [(&str, &str, &str); 4] = [
    ("console.js", JS, include_str!("assets/console.js")),
    ("demo.js", JS, include_str!("assets/demo.js")),
    ("player.js", JS, include_str!("../../examples/player.js")),
    ("style.css", CSS, include_str!("assets/style.css")),
];

/// The content type and body of the file named `name`.
pub fn find(name: &str) -> Option<(&'static str, &'static str)> {
    FILES
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, content_type, body)| (*content_type, *body))
}
