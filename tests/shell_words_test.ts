// splitShellWords: POSIX shell quoting without a shell, for `command = …` in
// cmappmgr's configuration file; what a shell would expand is refused.
import assert from "node:assert/strict";
import { ShellWordsError, splitShellWords } from "../cli/_shell_words.ts";

Deno.test("shell words: quoting as a POSIX shell has it", () => {
  const cases: [string, string[]][] = [
    ["/opt/app/bin/server --port 8080", ["/opt/app/bin/server", "--port", "8080"]],
    [`sh -c 'echo "$0"; exit 3' app`, ["sh", "-c", 'echo "$0"; exit 3', "app"]],
    [`printf "%s\\n" "two  words" ''`, ["printf", "%s\\n", "two  words", ""]],
    [`a\\ b "c\\"d" 'e\\f' g\\'h`, ["a b", 'c"d', "e\\f", "g'h"]],
    [`x"y"'z'`, ["xyz"]],
    [`run --key=a#b # the rest is a comment`, ["run", "--key=a#b"]],
    [`  lead\ttab  `, ["lead", "tab"]],
    [`echo "\\$HOME is kept"`, ["echo", "$HOME is kept"]],
    [`echo '*.c' "?" \\[x]`, ["echo", "*.c", "?", "[x]"]],
    ["", []],
    [`app ''#x y`, ["app", "#x", "y"]],
    [`""~x`, ["~x"]],
  ];
  for (const [text, words] of cases) assert.deepEqual(splitShellWords(text), words, text);
});

Deno.test("shell words: what a shell would expand or cut is refused, with the place", () => {
  const bad: [string, RegExp][] = [
    ["echo $HOME", /\$ at character 6.*nothing is expanded/],
    [`echo "$HOME"`, /\$ in double quotes/],
    ["echo `date`", /` at character 6/],
    ["a; b", /shell operator ;/],
    ["a | b", /shell operator \|/],
    ["a > f", /shell operator >/],
    ["ls *.c", /glob character \*/],
    ["cd ~/x", /leading ~/],
    ["echo 'open", /unterminated '/],
    [`echo "open`, /unterminated "/],
    ["echo x\\", /backslash at the end/],
  ];
  for (const [text, why] of bad) {
    assert.throws(
      () => splitShellWords(text),
      (e) => e instanceof ShellWordsError && why.test(e.message),
      text,
    );
  }
});
