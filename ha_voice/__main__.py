"""`python -m ha_voice` is `ha-voice`."""

import sys

from ha_voice.cli import main

if __name__ == "__main__":
    sys.exit(main())
