from services.settings import KNOWN
from services.worker.service import WorkerService
from shared.service import run

run(WorkerService, KNOWN)
