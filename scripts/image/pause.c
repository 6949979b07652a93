/* The first process of every pod sandbox (containerd's sandbox_image): it holds the pod's
 * namespaces, reaps orphans, and exits on SIGINT or SIGTERM. Built static into an image of its
 * own (scripts/image.sh pause), since no registry.k8s.io/pause can be pulled here. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction stop = {.sa_handler = quit};
  struct sigaction child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  sigaction(SIGINT, &stop, NULL);
  sigaction(SIGTERM, &stop, NULL);
  sigaction(SIGCHLD, &child, NULL);
  for (;;)
    pause();
}
