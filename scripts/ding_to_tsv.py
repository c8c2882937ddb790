"""German-English sentence pairs from the Ding dictionary, as a TSV.

    apt-get download trans-de-en
    python scripts/ding_to_tsv.py trans-de-en_*.deb -o de_en.tsv
    python examples/train_seq2seq.py --data de_en.tsv

Ding (https://dict.tu-chemnitz.de/, GPL-2+) is the German-English
dictionary that Debian ships as the package `trans-de-en`, in the file
/usr/share/trans/de-en. PATH is the .deb itself (read here, no dpkg
needed) or that file, extracted with `dpkg-deb -x`.

Each line of the dictionary is one entry, `German :: English`. Both sides
are lists of the same length separated by ` | `: the headword, its
inflections, then phrases and example sentences, the n-th German item
translated by the n-th English one. For instance:

    unwahrscheinlich {adj} | ... | Die Preise werden sich kaum ändern. | ...
      :: improbable; unlikely | ... | Prices are unlikely to change. | ...

The rule for a full sentence, applied to both items of a pair: it starts
with an upper-case letter, ends with `.`, `!` or `?`, has at least 3
words, and holds none of the dictionary's markup: no `{...}` (grammar),
`[...]` (usage labels), `(...)` (optional words), `/` or `;`
(alternatives), `…` or `~` (gaps), and no placeholders (`jd.`, `jdm.`,
`etw.`, `sb.`, `sth.`, ...). A pair is written once, as `German<TAB>English`, in
dictionary order. The 2023-01-30 dictionary (package 1.9-6) gives 14,437
pairs, averaging about 8 words.
"""

import argparse
import io
import re
import sys
import tarfile

DICTIONARY = "usr/share/trans/de-en"
MARKUP = re.compile(r"[{}\[\]()/;…~<>\t]")
PLACEHOLDERS = re.compile(r"\b(jd[mnrs]?|etw|sb|sth)\.")


def is_sentence(text):
    """Whether `text` is a full sentence by the rule above."""
    return (
        text[:1].isupper()
        and text.endswith((".", "!", "?"))
        and len(text.split()) >= 3
        and not MARKUP.search(text)
        and not PLACEHOLDERS.search(text)
    )


def sentence_pairs(lines):
    """`(german, english)` full-sentence pairs of dictionary lines, each
    once, in order."""
    seen = set()
    for line in lines:
        if line.startswith("#") or " :: " not in line:
            continue
        german, english = line.split(" :: ", 1)
        german, english = german.split(" | "), english.split(" | ")
        if len(german) != len(english):
            continue  # not aligned: trust none of it
        for pair in zip(german, english, strict=True):
            pair = tuple(item.strip() for item in pair)
            if pair not in seen and all(map(is_sentence, pair)):
                seen.add(pair)
                yield pair


def read_deb(path):
    """The dictionary's text from a .deb: an `ar` archive whose member
    `data.tar.*` holds the files."""
    with open(path, "rb") as file:
        archive = file.read()
    if not archive.startswith(b"!<arch>\n"):
        raise ValueError("not a .deb (ar) archive")
    offset = 8
    while offset + 60 <= len(archive):
        header = archive[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58])
        offset += 60
        if name.startswith("data.tar"):
            data = io.BytesIO(archive[offset : offset + size])
            with tarfile.open(fileobj=data) as tar:
                for member in tar.getmembers():
                    if member.name.lstrip("./") == DICTIONARY:
                        return tar.extractfile(member).read().decode("utf-8")
            raise ValueError(f"no {DICTIONARY} in the package")
        offset += size + size % 2
    raise ValueError("no data.tar member")


def read_dictionary(path):
    if path.endswith(".deb"):
        return read_deb(path)
    with open(path, encoding="utf-8") as file:
        return file.read()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.strip().partition("\n")[0],
        epilog=__doc__.strip().partition("\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path", help="trans-de-en_*.deb, or its extracted de-en file"
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="the TSV file to write (German<TAB>English lines)",
    )
    args = parser.parse_args(argv)
    try:
        text = read_dictionary(args.path)
    except (OSError, ValueError, tarfile.TarError) as error:
        parser.error(f"{args.path}: {error}")
    pairs = list(sentence_pairs(text.splitlines()))
    if not pairs:
        parser.error(f"{args.path}: no sentence pairs (not Ding's de-en?)")
    with open(args.output, "w", encoding="utf-8") as file:
        for german, english in pairs:
            file.write(f"{german}\t{english}\n")
    print(f"{len(pairs)} sentence pairs -> {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
