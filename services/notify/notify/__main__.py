from shared.service import main

from .service import SERVICE

main(SERVICE)
