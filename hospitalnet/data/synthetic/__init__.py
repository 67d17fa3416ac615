"""The built-in synthetic ChestX-ray14 world, written in the real NIH on-disk format.

``population`` draws patients, follow-up images, views and 14-label findings with ChestX-ray14-like
prevalences and co-occurrence; ``phantom`` renders chest phantoms in which every label leaves its
own visual trace; ``writer`` writes Data_Entry_2017.csv, the PNG archives and the split lists.
"""

from hospitalnet.data.synthetic.population import PREVALENCE, draw_population
from hospitalnet.data.synthetic.writer import write_contact_sheet, write_world

__all__ = ["PREVALENCE", "draw_population", "write_contact_sheet", "write_world"]
