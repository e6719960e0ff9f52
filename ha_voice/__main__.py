"""`python -m ha_voice` is `ha-voice`."""

import sys

from ha_voice.cli import main

sys.exit(main())
