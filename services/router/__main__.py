from services.router.service import RouterService
from services.settings import KNOWN
from shared.service import run

if __name__ == "__main__":
    run(RouterService, KNOWN)
