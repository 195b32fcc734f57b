import sys
from pathlib import Path

from bot.samples import SAMPLE_FILE, build

count = build(Path(sys.argv[1]), Path(__file__).parent / SAMPLE_FILE)
sys.stdout.write(f"wrote {count} articles to bot/samples/{SAMPLE_FILE}\n")
