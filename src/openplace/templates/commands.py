"""``openplace template diff``: how far a running canvas is from a template, through its
public API (the same answers a community's script would get)."""

from __future__ import annotations

import argparse
from pathlib import Path

from openplace.config import Settings
from openplace.templates.model import Diff, Template, diff, load

SHOWN = 20  # wrong pixels listed without --all


def parse_at(text: str) -> tuple[int, int]:
    """``"X,Y"`` as two ints; argparse reports a :class:`ValueError` as a usage error."""
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected X,Y (e.g. 120,45), got {text!r}")
    try:
        x, y = int(parts[0]), int(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers X,Y, got {text!r}") from None
    return x, y


def default_url(settings: Settings) -> str:
    """This machine's canvas as ``openplace serve`` would print it."""
    host = settings.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{settings.port}"


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The template commands, on the ``openplace`` parser."""
    template = sub.add_parser("template", help="compare a template image with the board")
    tsub = template.add_subparsers(dest="template_command", required=True)
    d = tsub.add_parser(
        "diff",
        help="how many pixels of the board differ from an image placed at X,Y, and where",
        description="Exit status: 0 when the board shows the template, 1 when it differs, "
        "2 on an error.",
    )
    d.add_argument("image", type=Path, help="the template: a PNG (or any image Pillow reads)")
    d.add_argument("--at", type=parse_at, required=True, metavar="X,Y",
                   help="the board pixel of the image's top-left corner")  # fmt: skip
    d.add_argument("--url", default=None,
                   help="the canvas (default: this machine's, http://127.0.0.1:8000)")  # fmt: skip
    d.add_argument("--all", action="store_true", help=f"list every wrong pixel (default {SHOWN})")
    d.set_defaults(func=template_diff)
    draw = sub.add_parser(
        "draw",
        help="keep a template on the board by the rules: one user, its cooldown, the most "
        "damaged pixels first",
        description="Exit status: 0 when stopped by SIGINT/SIGTERM or, with --once, when the "
        "template is complete; 1 when the bot cannot go on (a ban until lifted, a refused "
        "token; with --once: pixels left only where placing is refused); 2 on an error in "
        "the arguments or the image. See docs/client.md.",
    )
    draw.add_argument("image", type=Path, help="the template: a PNG (or any image Pillow reads)")
    draw.add_argument("--at", type=parse_at, required=True, metavar="X,Y",
                      help="the board pixel of the image's top-left corner")  # fmt: skip
    draw.add_argument("--url", default=None, help="the canvas (default: this machine's)")
    draw.add_argument("--token-file", type=Path, default=None, metavar="PATH",
                      help="where this bot's user token is kept, so a restarted bot is the "
                      "same user (default: IMAGE.token next to the image; made 0600)")  # fmt: skip
    draw.add_argument(
        "--once", action="store_true", help="exit when the template is complete (default: never)"
    )
    draw.set_defaults(func=draw_command)


def template_diff(args: argparse.Namespace, settings: Settings) -> int:
    from openplace.client import Canvas

    with Canvas(args.url or default_url(settings)) as canvas:
        info = canvas.info()
        template = load(args.image, args.at, info.palette, board=(info.width, info.height))
        board = canvas.board(fresh=True)
    result = diff(template, board.colors)
    print(report(args.image.name, template, result, board.seq, everything=args.all))
    return 0 if result.complete else 1


def report(name: str, template: Template, result: Diff, seq: int, everything: bool = False) -> str:
    """What ``template diff`` prints: counts, then where the wrong pixels are."""
    t = template
    lines = [f"{name}: {t.width}x{t.height} at {t.x},{t.y}, {t.wanted:,} pixels set"]
    if t.off_palette:
        lines.append(f"  {t.off_palette:,} of them not a palette colour: compared as the nearest")
    share = 100.0 * result.correct / t.wanted if t.wanted else 100.0
    lines.append(
        f"board at #{seq}: {result.correct:,} right, {result.wrong:,} wrong ({share:.1f}% done)"
    )
    box = result.bbox
    if box is None:
        return "\n".join(lines)
    x0, y0, x1, y1 = box
    lines.append(f"wrong pixels within x {x0}..{x1}, y {y0}..{y1}")
    lines.append("worst 8x8 areas (x,y wxh: wrong):")
    lines += [f"  {a.x},{a.y} {a.w}x{a.h}: {a.wrong}" for a in result.areas()]
    pixels = result.pixels()
    shown = pixels if everything else pixels[:SHOWN]
    lines.append("x,y: want -> have")
    lines += [f"  {x},{y}: {want} -> {have}" for x, y, want, have in shown]
    if len(shown) < len(pixels):
        lines.append(f"  ... and {len(pixels) - len(shown):,} more (--all lists them)")
    return "\n".join(lines)


def draw_command(args: argparse.Namespace, settings: Settings) -> int:
    """``openplace draw``: run the bot of :mod:`openplace.templates.bot`."""
    import asyncio

    from openplace.templates.bot import Bot, default_token_file, draw

    token_file = args.token_file or default_token_file(args.image)
    bot = Bot(args.url or default_url(settings), args.image, args.at, token_file, once=args.once)
    return asyncio.run(draw(bot))
