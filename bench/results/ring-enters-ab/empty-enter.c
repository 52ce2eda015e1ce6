#include <linux/io_uring.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
int main(){
  struct io_uring_params p; memset(&p,0,sizeof p);
  int fd = syscall(__NR_io_uring_setup, 256, &p);
  if (fd<0){perror("setup");return 1;}
  struct timespec a,b; int N=2000000;
  clock_gettime(CLOCK_MONOTONIC,&a);
  for(int i=0;i<N;i++) syscall(__NR_io_uring_enter, fd, 0, 0, 0, NULL, 0);
  clock_gettime(CLOCK_MONOTONIC,&b);
  double ns=((b.tv_sec-a.tv_sec)*1e9+(b.tv_nsec-a.tv_nsec))/N;
  printf("empty io_uring_enter: %.0f ns\n", ns);
  clock_gettime(CLOCK_MONOTONIC,&a);
  for(int i=0;i<N;i++) syscall(__NR_getppid);
  clock_gettime(CLOCK_MONOTONIC,&b);
  printf("getppid: %.0f ns\n", ((b.tv_sec-a.tv_sec)*1e9+(b.tv_nsec-a.tv_nsec))/N);
  return 0;
}
