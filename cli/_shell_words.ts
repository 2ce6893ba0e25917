/**
 * Splitting a command line written with POSIX shell quoting into its words,
 * without a shell: for `command = …` in cmappmgr's configuration file.
 *
 * @module
 */

/** A command line that cannot be split, with why. */
export class ShellWordsError extends Error {
  override name = "ShellWordsError";
}

const _OPERATORS = new Set([";", "&", "|", "<", ">", "(", ")"]);
const _BLANK = /[ \t]/;

/**
 * The words of `text` as a POSIX shell would split them, with quoting as it
 * has it: 'single quotes' keep everything, "double quotes" keep everything
 * but a backslash before $ ` " \, and a backslash outside quotes keeps the
 * next character. Nothing is expanded, so what a shell would expand or treat
 * specially is refused rather than passed on changed: `$` and backquotes
 * outside single quotes, shell operators (; & | < > ( )) and glob
 * characters (* ? [) outside quotes, and a leading `~`. A `#` that starts
 * a word starts a comment, as in a shell.
 *
 * @throws {ShellWordsError} an unterminated quote, or what a shell would expand
 * @example
 * ```ts
 * import { splitShellWords } from "./_shell_words.ts";
 * splitShellWords(`sh -c 'echo "$0"; exit 3' app`); // ["sh", "-c", 'echo "$0"; exit 3', "app"]
 * ```
 */
export function splitShellWords(text: string): string[] {
  const words: string[] = [];
  let word: string | null = null;
  let i = 0;
  const refuse = (what: string): never => {
    throw new ShellWordsError(
      `${what} at character ${i + 1}: no shell runs the command, so nothing is expanded; ` +
        `quote it ('…') to pass it as it is`,
    );
  };
  while (i < text.length) {
    const c = text[i];
    if (_BLANK.test(c)) {
      if (word !== null) words.push(word);
      word = null;
      i++;
      continue;
    }
    // (A word begins here: only then does # start a comment and ~ mean a home directory.)
    const starting = word === null;
    word ??= "";
    if (c === "'") {
      const end = text.indexOf("'", i + 1);
      if (end < 0) throw new ShellWordsError(`unterminated ' at character ${i + 1}`);
      word += text.slice(i + 1, end);
      i = end + 1;
    } else if (c === '"') {
      i++;
      for (;;) {
        if (i >= text.length) throw new ShellWordsError(`unterminated " in ${text}`);
        const d = text[i];
        if (d === '"') break;
        if (d === "$" || d === "`") refuse(`${d} in double quotes`);
        if (d === "\\" && i + 1 < text.length && '$`"\\'.includes(text[i + 1])) {
          word += text[i + 1];
          i += 2;
          continue;
        }
        word += d;
        i++;
      }
      i++;
    } else if (c === "\\") {
      if (i + 1 >= text.length) throw new ShellWordsError("a backslash at the end");
      word += text[i + 1];
      i += 2;
    } else {
      if (c === "$" || c === "`") refuse(c);
      if (_OPERATORS.has(c)) refuse(`the shell operator ${c}`);
      if (c === "*" || c === "?" || c === "[") refuse(`the glob character ${c}`);
      if (c === "~" && starting) refuse("a leading ~");
      if (c === "#" && starting) {
        word = null; // a comment, as in a shell: the rest of the line
        break;
      }
      word += c;
      i++;
    }
  }
  if (word !== null) words.push(word);
  return words;
}
